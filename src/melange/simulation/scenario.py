"""What one simulated run does: the workload, the deployment and the faults, from a seed.

A :class:`Scenario` is plain data, so a run can be printed, stored as JSON, replayed exactly
and shrunk (faults removed, messages dropped) while it still fails. :meth:`Scenario.generate`
draws one from a seed; the Hypothesis strategy in :mod:`melange.simulation.search` draws the
same shapes so that Hypothesis can shrink them.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: Handler behaviours, per message (the same for every consumer unless a consumer is named):
#: ``ok``; ``fail:K`` fails its first K runs; ``non_retryable`` raises an exception the
#: policy dead-letters at once; ``hostile:K`` fails K runs with an exception whose ``str()``
#: raises; ``exit`` raises ``SystemExit`` on its first run (the process stops);
#: ``slow:S`` runs S seconds (longer than a lease); ``poison`` cannot be decoded.
BEHAVIOURS = ("ok", "fail", "non_retryable", "hostile", "exit", "slow", "poison")

#: Fault kinds. Each fires at its time ``at`` (virtual seconds) on process slot ``process``:
#:
#: - ``crash``: the process dies at once (SIGKILL); handlers in progress never finish.
#: - ``crash_at``: the process dies at its next ``point`` after ``at``: ``before_handler``,
#:   ``after_handler`` (the handler's effects are done, the dispatcher has not seen it end),
#:   ``before_ack``, ``during_ack`` (half of a batch acknowledged), ``before_done`` (before
#:   the deduplication claim is marked done), ``after_receive``.
#: - ``stop``: one SIGTERM: finish what is in hand, give back the rest, exit.
#: - ``stop_twice``: SIGTERM, then a second one ``duration`` seconds later (exit at once).
#: - ``cut``: the broker connection is lost for ``duration`` seconds.
#: - ``stall``: the process is frozen for ``duration`` seconds (a long GC pause, a stopped
#:   VM): its leases and claims are not renewed and may expire.
#: - ``drop_reply``: the broker performs the process's next ``point`` call (``ack``,
#:   ``nack``, ``receive``, ``dead_letter``, ``release``) but the reply is lost.
#: - ``drop_request``: that call never reaches the broker (it fails).
#: - ``broker_slow``: the broker's replies to the process come ``duration`` seconds late
#:   for a while (10 s).
#: - ``duplicate``: the broker delivers a message twice (a second copy is enqueued).
#: - ``cache_down``: the deduplication cache is unreachable for ``duration`` seconds.
#: - ``cache_slow``: the cache answers ``duration`` seconds late for a while (10 s).
FAULT_KINDS = (
    "crash",
    "crash_at",
    "stop",
    "stop_twice",
    "cut",
    "stall",
    "drop_reply",
    "drop_request",
    "broker_slow",
    "duplicate",
    "cache_down",
    "cache_slow",
)
CRASH_POINTS = (
    "before_handler",
    "after_handler",
    "before_ack",
    "during_ack",
    "before_done",
    "after_receive",
)
CALL_POINTS = ("ack", "nack", "receive", "dead_letter", "release")


@dataclass(frozen=True)
class Fault:
    """One injected fault (see :data:`FAULT_KINDS`)."""

    kind: str
    at: float
    process: int = 0
    duration: float = 0.0
    point: str = ""

    def __str__(self) -> str:
        extra = f" {self.point}" if self.point else ""
        extra += f" for {self.duration:g}s" if self.duration else ""
        return f"{self.kind}{extra} on process {self.process} at t={self.at:g}s"


@dataclass(frozen=True)
class Scenario:
    """A workload, a deployment and a fault schedule. Everything a run depends on."""

    seed: int
    messages: int = 10
    fifo: bool = False
    groups: int = 3
    processes: int = 2
    workers: int = 1
    batch: int = 10
    consumers: int = 1
    dedup: bool = False
    fail_open: bool = False
    #: ``lease``: unsettled messages come back when their visibility timeout expires (SQS,
    #: the embedded backends); ``connection``: they come back when their receiver's
    #: connection closes, and a message whose connection was lost is not settled (RabbitMQ).
    semantics: str = "lease"
    visibility_timeout: float = 10.0
    heartbeat: bool = True
    dedup_lease: float = 6.0
    max_attempts: int = 4
    immediate_retries: int = 0
    initial_delay: float = 1.0
    dead_letter_queue: bool = True
    publish_span: float = 5.0
    #: Behaviour of message ``i`` (keys are message numbers; the default is ``ok``).
    behaviours: dict[int, str] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()

    def behaviour(self, index: int) -> tuple[str, float]:
        """Message ``index``'s behaviour and its argument (``fail:2`` -> ``("fail", 2.0)``)."""
        spec = self.behaviours.get(index, "ok")
        name, _, arg = spec.partition(":")
        return name, float(arg) if arg else 0.0

    @classmethod
    def generate(cls, seed: int) -> Scenario:
        """A scenario drawn from ``seed``: small, varied, with a few faults."""
        rng = random.Random(seed)
        messages = rng.choice((1, 3, 8, 15, 30))
        fifo = rng.random() < 0.35
        processes = rng.choice((1, 2, 2, 3))
        behaviours: dict[int, str] = {}
        for index in range(messages):
            roll = rng.random()
            if roll < 0.62:
                continue
            behaviours[index] = rng.choice(
                (
                    f"fail:{rng.randint(1, 2)}",
                    f"fail:{rng.randint(1, 6)}",
                    "non_retryable",
                    f"hostile:{rng.randint(1, 5)}",
                    "exit",
                    f"slow:{rng.choice((12, 25, 40))}",
                    "poison",
                )
            )
        scenario = cls(
            seed=seed,
            messages=messages,
            fifo=fifo,
            groups=rng.choice((1, 2, 4)),
            processes=processes,
            workers=rng.choice((1, 1, 2, 4)),
            batch=rng.choice((1, 4, 10)),
            consumers=rng.choice((1, 1, 2)),
            dedup=rng.random() < 0.5,
            fail_open=rng.random() < 0.2,
            semantics=rng.choice(("lease", "connection")),
            visibility_timeout=rng.choice((4.0, 10.0, 30.0)),
            heartbeat=rng.random() < 0.9,
            dedup_lease=rng.choice((3.0, 6.0, 15.0)),
            max_attempts=rng.choice((1, 2, 4, 5)),
            immediate_retries=rng.choice((0, 0, 1)),
            initial_delay=rng.choice((0.0, 0.5, 1.0)),
            dead_letter_queue=rng.random() < 0.9,
            publish_span=rng.choice((0.0, 2.0, 10.0)),
            behaviours=behaviours,
        )
        if not scenario.heartbeat:
            # Without the heartbeat a handler longer than its lease never acknowledges: only
            # the broker's redrive to a dead-letter queue ends its redeliveries.
            scenario = replace(scenario, dead_letter_queue=True)
        faults = tuple(random_fault(rng, processes) for _ in range(rng.choice((0, 1, 2, 3, 5))))
        return replace(scenario, faults=tuple(sorted(faults, key=lambda f: f.at)))

    def to_json(self) -> str:
        """This scenario as one line of JSON (``from_json`` reads it back)."""
        data = asdict(self)
        data["behaviours"] = {str(k): v for k, v in sorted(self.behaviours.items())}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        """The scenario ``to_json`` wrote."""
        data: dict[str, Any] = json.loads(text)
        data["behaviours"] = {int(k): v for k, v in data.get("behaviours", {}).items()}
        data["faults"] = tuple(Fault(**fault) for fault in data.get("faults", ()))
        return cls(**data)


def random_fault(rng: random.Random, processes: int) -> Fault:
    """One fault drawn from ``rng`` (used by :meth:`Scenario.generate`)."""
    kind = rng.choice(FAULT_KINDS)
    at = round(rng.uniform(0.0, 25.0), 3)
    process = rng.randrange(processes)
    if kind == "crash_at":
        return Fault(kind, at, process, point=rng.choice(CRASH_POINTS))
    if kind in ("drop_reply", "drop_request"):
        return Fault(kind, at, process, point=rng.choice(CALL_POINTS))
    if kind in ("stop_twice", "cut", "stall", "cache_down", "cache_slow", "broker_slow"):
        return Fault(kind, at, process, duration=rng.choice((0.5, 3.0, 12.0, 40.0)))
    return Fault(kind, at, process)


__all__ = ["BEHAVIOURS", "CALL_POINTS", "CRASH_POINTS", "FAULT_KINDS", "Fault", "Scenario"]
