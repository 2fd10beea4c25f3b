"""The dispatch decisions, free of I/O.

Everything a dispatcher decides about a received message lives here: how to decode it, which
consumers get it, and how the message is settled given what each consumer did. The functions
take values and return values; receiving, calling consumers, the deduplication cache and
settling with the broker are the caller's job. The same logic thus drives the threaded
dispatcher, an asyncio one, and every backend.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from melange.consumers import Consumer, DuckTypedConsumer, _wants_manifest, as_consumer
from melange.dispatch.policy import FailurePolicy
from melange.exceptions import InvalidDeduplicationKeyError, SerializationError
from melange.models import (
    CLAIM_CHECK,
    FAILURE_ATTEMPTS,
    FAILURE_CONSUMER,
    FAILURE_EXCEPTION,
    FAILURE_QUEUE,
    FAILURE_REASON,
    Message,
)
from melange.serializers.registry import SerializerRegistry


class Action(enum.Enum):
    """How a message is settled."""

    ACK = "ack"
    RETRY = "retry"  # a failed attempt: back after the delay, counted
    RELEASE = "release"  # no handler ran: back after the delay, not counted as an attempt
    ABANDON = "abandon"  # its connection was lost: the broker delivers it again anyway
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Verdict:
    """The decision for one message: the action, the retry delay, and why."""

    action: Action
    delay: float = 0.0
    reason: str = ""
    exception_type: str = ""
    consumer: str = ""
    #: The first consumer failure behind a retry or a dead letter, for the log line that
    #: records the decision (with its traceback).
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def failure_headers(self, message: Message, queue_name: str) -> dict[str, str]:
        """Headers a dead-lettered copy of ``message`` carries."""
        return {
            FAILURE_REASON: self.reason,
            FAILURE_EXCEPTION: self.exception_type,
            FAILURE_ATTEMPTS: str(message.attempt or 1),
            FAILURE_CONSUMER: self.consumer,
            FAILURE_QUEUE: queue_name,
        }


ACK = Verdict(Action.ACK)
ABANDON = Verdict(Action.ABANDON, reason="the connection it came on was lost")

#: Default lease of a deduplication claim, in seconds. Claims are renewed while their
#: handler runs, so this only bounds how long a crashed process's claim blocks a message.
DEFAULT_DEDUP_LEASE_SECONDS = 15.0


class Decoded(NamedTuple):
    """A message that was decoded (a named tuple: one is made per message, and a tuple is
    the cheapest immutable record to make)."""

    payload: Any


@dataclass(frozen=True)
class Poison:
    """A message that cannot be decoded, and why. It is dead-lettered, never retried."""

    reason: str
    exception_type: str


#: The header in which the backends' wire formats keep a serializer id that is not a number.
SERIALIZER_ID_HEADER = "serializer_id"


def decode(message: Message, registry: SerializerRegistry) -> Decoded | Poison:
    """Decode ``message`` strictly with the serializer its id names among ``registry``'s.

    The serializer sees the message's headers too (a typed serializer reads the schema
    version there); whatever it raises as a ``SerializationError``, including a payload that
    fails validation, makes the message poison.
    """
    if CLAIM_CHECK in message.headers:
        # Its body is a placeholder: the payload is in a payload store this dispatcher was
        # not given (a dispatcher given one fetches it before decoding).
        return Poison(
            "its payload is held in a payload store (claim check header "
            f"{CLAIM_CHECK!r}) and this dispatcher has no claim check: give it "
            "claim_check=ClaimCheck(<the publishers' store>), then redrive the message",
            "ClaimCheckError",
        )
    raw_id = message.headers.get(SERIALIZER_ID_HEADER) if message.serializer_id is None else None
    if raw_id is not None:
        # The wire found a serializer id it could not read as a number (and kept it here).
        return Poison(
            f"serializer id {raw_id[:40]!r} is not a whole number; a Melange publisher "
            "sends the number of a serializer",
            "UnknownSerializerError",
        )
    try:
        payload = registry.deserialize(
            message.content, message.serializer_id, message.manifest, message.headers
        )
    except SerializationError as exc:
        return Poison(str(exc), type(exc).__name__)
    return Decoded(payload)


def poison_verdict(poison: Poison) -> Verdict:
    """Undecodable messages go straight to the dead-letter queue."""
    return Verdict(
        Action.DEAD_LETTER,
        reason=f"undecodable message: {poison.reason}",
        exception_type=poison.exception_type,
        consumer="",
    )


def payload_unavailable_verdict(
    error: BaseException,
    attempt: int | None,
    policy: FailurePolicy,
    rng: random.Random | None = None,
) -> Verdict:
    """A claim-checked payload could not be fetched or checked: retried as a failed attempt
    (the store may be down, or slower to show a payload than the broker a message) until the
    policy is exhausted, then dead-lettered with the reason."""
    reason = f"claim-checked payload unavailable: {describe_exception(error)}"
    exc_type = f"{type(error).__module__}.{type(error).__qualname__}"
    if not policy.exhausted(attempt):
        return Verdict(Action.RETRY, policy.delay_for(attempt, rng), reason, exc_type, "", error)
    why = f"gave up after {attempt} attempt(s)"
    return Verdict(Action.DEAD_LETTER, 0.0, f"{why}: {reason}", exc_type, "", error)


def describe_exception(exc: BaseException) -> str:
    """``"Type: message"``, even for an exception whose ``__str__`` itself raises."""
    try:
        text = str(exc)
    except Exception as failure:
        text = f"<str() failed: {type(failure).__name__}>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Outcome(enum.Enum):
    """What happened when one consumer was given a message."""

    SUCCEEDED = "succeeded"
    SKIPPED_DUPLICATE = "skipped_duplicate"
    BUSY = "busy"  # another process holds the deduplication claim
    FAILED = "failed"
    NOT_ATTEMPTED = "not_attempted"  # the deduplication cache could not be reached


@dataclass(frozen=True)
class ConsumerResult:
    """One consumer's outcome for a message (``error`` set when it failed)."""

    consumer: Consumer
    outcome: Outcome
    error: BaseException | None = None


class Route:
    """Picks the consumers that accept a message, remembering how each wants to be asked."""

    __slots__ = ("_consumers",)

    def __init__(self, consumers: Iterable[Consumer] = ()) -> None:
        self._consumers: list[tuple[Consumer, bool]] = []
        for item in consumers:
            self.add(item)

    def add(self, consumer: Consumer) -> None:
        """Route messages to ``consumer`` too (any object with ``process``, see
        :func:`~melange.consumers.as_consumer`)."""
        adapted = as_consumer(consumer)
        self._consumers.append((adapted, _wants_manifest(adapted)))

    def remove(self, consumer: Consumer) -> None:
        """Stop routing to ``consumer`` (as it was given to :meth:`add`)."""
        self._consumers = [
            (c, m)
            for c, m in self._consumers
            if c is not consumer and not (isinstance(c, DuckTypedConsumer) and c.target is consumer)
        ]

    @property
    def consumers(self) -> list[Consumer]:
        """The attached consumers, in order."""
        return [c for c, _ in self._consumers]

    def select(self, payload: Any, manifest: str | None) -> list[Consumer]:
        """The consumers whose ``accepts`` is true for the message."""
        return [
            consumer
            for consumer, wants_manifest in self._consumers
            if consumer.accepts(manifest if wants_manifest else payload)
        ]


def settle(
    results: Sequence[ConsumerResult],
    attempt: int | None,
    policy: FailurePolicy,
    *,
    always_ack: bool = False,
    rng: random.Random | None = None,
    busy_delay: float | None = None,
) -> Verdict:
    """Decide how to settle a message given each accepting consumer's outcome.

    The message is acknowledged when every consumer succeeded or skipped a duplicate (and
    when no consumer accepted it, or ``always_ack`` is set). A failure is retried after the
    policy's delay until the policy is exhausted, then dead-lettered; a non-retryable
    exception dead-letters at once. When several consumers failed, a retry wins over a
    dead-letter so that no consumer loses its remaining attempts. A consumer's own
    ``failure_policy`` overrides ``policy``.

    A message whose deduplication claim another process holds is released (given back
    without counting an attempt) for ``busy_delay`` seconds (the claim's lease: by then the
    holder finished or its claim expired), or the policy's first delay when ``busy_delay`` is
    not given.
    """
    if always_ack:
        return ACK
    failed = [r for r in results if r.outcome is Outcome.FAILED and r.error is not None]
    if not failed:
        # No handler ran for these: the message comes back later without the hand-back
        # counting as an attempt, so a claim held by a crashed process or a cache outage
        # never pushes a message towards the dead-letter queue.
        if any(r.outcome is Outcome.BUSY for r in results):
            # Back once the holder can have finished, or its claim (renewed while it runs)
            # has expired because it died.
            delay = busy_delay if busy_delay is not None else policy.delay_for(1, rng)
            return Verdict(
                Action.RELEASE, delay=delay, reason="deduplication claim held by another consumer"
            )
        if any(r.outcome is Outcome.NOT_ATTEMPTED for r in results):
            return Verdict(
                Action.RELEASE,
                delay=policy.delay_for(1, rng),
                reason="deduplication cache unreachable",
            )
        return ACK
    first_error = failed[0].error
    assert first_error is not None
    reason = describe_exception(first_error)
    exc_type = f"{type(first_error).__module__}.{type(first_error).__qualname__}"
    names = ", ".join(r.consumer.name for r in failed)
    retry_delays: list[float] = []
    any_retryable = False
    for result in failed:
        own = result.consumer.failure_policy or policy
        assert result.error is not None
        if own.is_retryable(result.error) and not isinstance(
            result.error, InvalidDeduplicationKeyError
        ):
            any_retryable = True
            if not own.exhausted(attempt):
                retry_delays.append(own.delay_for(attempt, rng))
    if retry_delays:
        return Verdict(Action.RETRY, max(retry_delays), reason, exc_type, names, first_error)
    why = f"gave up after {attempt} attempt(s)" if any_retryable else "non-retryable exception"
    return Verdict(Action.DEAD_LETTER, 0.0, f"{why}: {reason}", exc_type, names, first_error)


__all__ = [
    "ABANDON",
    "ACK",
    "DEFAULT_DEDUP_LEASE_SECONDS",
    "Action",
    "ConsumerResult",
    "Decoded",
    "Outcome",
    "Poison",
    "Route",
    "Verdict",
    "decode",
    "describe_exception",
    "payload_unavailable_verdict",
    "poison_verdict",
    "settle",
]
