"""The failure policy: what happens to a message whose processing failed.

One policy means the same on every backend: a failed message is first retried in process
(``immediate_retries``), then handed back to the broker with a growing delay (exponential
backoff with jitter), and once ``max_attempts`` attempts at it failed it is moved to the
queue's dead-letter queue with headers telling why. An attempt is a run of the consumers that
failed: a message given back unprocessed (on stop, after a crash, while another process holds
its deduplication claim) keeps the attempts it had, except on SQS, whose receive count is all
the broker tells. Exception types listed in
``non_retryable`` skip the retries and go straight to the dead-letter queue.

Each backend maps the delay onto its own tools (SQS visibility changes, RabbitMQ delayed
redelivery, in-memory and SQLite timers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FailurePolicy:
    """How failed messages are retried and when they are dead-lettered.

    Args:
        max_attempts: Failed attempts before the message is dead-lettered; ``None`` retries
            forever (leaving the broker's own redrive policy, if any, as the limit).
        immediate_retries: Extra in-process calls of a failing consumer, at once, before the
            delivery counts as failed.
        initial_delay: Seconds before the second delivery.
        backoff_factor: Each further delivery waits this many times longer.
        max_delay: Upper bound of the delay, in seconds.
        jitter: Random spread of each delay, as a fraction (0.1 is +/-10%), so that messages
            that failed together do not all come back together.
        non_retryable: Exception types that dead-letter the message at once.
    """

    # 4, as SQS's redrive count (7.2.0's): with every setting left at its default the policy
    # dead-letters, with the reason, before any broker does so by itself (elsewhere the
    # broker's limit is a backstop of 20, see DEFAULT_MAX_RECEIVE_COUNT).
    max_attempts: int | None = 4
    immediate_retries: int = 0
    initial_delay: float = 1.0
    backoff_factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 or None, got {self.max_attempts}")
        if self.immediate_retries < 0:
            raise ValueError(f"immediate_retries must be >= 0, got {self.immediate_retries}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.backoff_factor < 1:
            raise ValueError("delays must be >= 0 and backoff_factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def no_delay(cls, max_attempts: int | None = 4) -> FailurePolicy:
        """Redeliver at once, up to ``max_attempts`` deliveries (useful in tests)."""
        return cls(max_attempts=max_attempts, initial_delay=0.0, jitter=0.0)

    def is_retryable(self, exc: BaseException) -> bool:
        """False for the exception types declared non-retryable."""
        return not isinstance(exc, self.non_retryable)

    def exhausted(self, attempt: int | None) -> bool:
        """Whether a message on its ``attempt``-th delivery may not be delivered again."""
        return (
            self.max_attempts is not None and attempt is not None and attempt >= self.max_attempts
        )

    def delay_for(self, attempt: int | None, rng: random.Random | None = None) -> float:
        """Seconds to wait before delivering again a message that failed on ``attempt``."""
        n = max(1, attempt or 1)
        base = min(self.max_delay, self.initial_delay * self.backoff_factor ** (n - 1))
        if self.jitter and base > 0:
            spread = base * self.jitter
            base += (rng or random).uniform(-spread, spread)
        return max(0.0, min(self.max_delay, base))


#: The policy dispatchers use unless told otherwise.
DEFAULT_POLICY = FailurePolicy()
