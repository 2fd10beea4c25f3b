"""What a simulated run recorded, and the guarantees checked against it after every run.

The :class:`History` is written by the simulation driver as things happen: publications,
handler runs with their start and end, the faults that touched a message (a crash while it
was in hand, a lost reply, a lease that expired, a duplicate delivery) and those that expose a
deduplication claim (a crash between the handler and marking the claim done, a cache that
could not be reached). :func:`check` then states each guarantee as a rule over the history:

- **nothing lost**: every message was handled successfully by every consumer, or is in the
  dead-letter queue with a reason (or, on a queue without one, is still queued because the
  policy could never let it go);
- **duplicates only where a fault allowed one**, and with a deduplication cache only where a
  fault defeated the claim;
- **FIFO order**: within a group, a message runs only after every earlier message's runs
  ended;
- **the failure policy**: a message that fails K times is dead-lettered after exactly
  ``max_attempts`` failed attempts (or handled on attempt K+1), with that count in its
  headers, each retry waiting at least the policy's delay;
- **shutdown drains**: a process that stopped gracefully settled or gave back every message
  it had received;
- **stats add up**: for each such process, ``received`` equals the sum of the ways a message
  is settled.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from melange.models import FAILURE_ATTEMPTS, FAILURE_REASON, Message

if TYPE_CHECKING:
    from melange.dispatch.policy import FailurePolicy
    from melange.simulation.processes import Process
    from melange.simulation.scenario import Scenario


#: Why a message run again by a consumer that succeeded is no fault: a retry runs every
#: consumer, when there is no deduplication cache.
SIBLING_FAILED = "a sibling consumer failed (no deduplication)"


@dataclass(slots=True)
class Run:
    """One call of one consumer on one message."""

    process: str
    consumer: str
    index: int
    start: float
    end: float | None = None  # None: its process died first
    ok: bool = False
    epoch: int = 0


@dataclass
class History:
    """Everything a run did that the invariants look at."""

    scenario: Scenario
    policy: FailurePolicy | None = None
    runs: list[Run] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    touched: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    exposed: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    first_published: dict[int, float] = field(default_factory=dict)
    publish_order: list[int] = field(default_factory=list)
    publications: list[int] = field(default_factory=list)  # duplicate copies too
    dead_letters: list[Message] = field(default_factory=list)
    leftover: list[Message] = field(default_factory=list)
    depth: int = 0
    end: float = 0.0
    trace: list[str] = field(default_factory=list)
    _ok: dict[int, set[str]] = field(default_factory=dict)
    #: Violations seen as they happened (the others are found in the history afterwards).
    violations: list[str] = field(default_factory=list)

    # -- recording --------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.trace.append(text)

    @staticmethod
    def index_of(message_id: str) -> int:
        return int(message_id.rsplit("-", 1)[1])

    def published_at(self, index: int, message: Message, when: float, copy: bool) -> None:
        self.publications.append(index)
        if index not in self.first_published:
            self.first_published[index] = when
            self.publish_order.append(index)

    def published_indexes(self) -> list[int]:
        return sorted(self.first_published)

    def touch(self, message: Message, why: str) -> None:
        self.touched[self.index_of(message.message_id)].append(why)

    def touch_index(self, index: int, why: str) -> None:
        self.touched[index].append(why)

    def expose_key(self, key: str, why: str) -> None:
        message_id = key.split(".", 1)[1]
        self.exposed[self.index_of(message_id)].append(why)

    def claim_done(self, key: str, when: float) -> None:
        pass

    def received(self, message: Message, proc: Process, processes: list[Process | None]) -> None:
        """A process received ``message``: if another still has it in hand, its lease ran
        out (or its connection went): both may handle it."""
        for other in [proc, *processes]:
            if other is None or other.gone:
                continue
            for held, _ in other.inflight.values():
                if held.message_id == message.message_id and held is not message:
                    # A fault that touched the message before (a duplicate copy, a receive
                    # answered after its lease) explains a second delivery.
                    explained = any(
                        reason != SIBLING_FAILED
                        for reason in self.touched.get(self.index_of(message.message_id), ())
                    )
                    self.touch(message, f"also in hand at {other.name} (lease expired)")
                    if (
                        self.scenario.heartbeat
                        and self.scenario.semantics == "lease"
                        and not other.disrupted
                        and not explained
                    ):
                        self.violations.append(
                            f"message {self.index_of(message.message_id)} was delivered again "
                            f"while {other.name} had it in hand, running and connected, with the "
                            "heartbeat on: its lease was not renewed"
                        )
                    return

    def succeeded(self, run: Run) -> None:
        self._ok.setdefault(run.index, set()).add(run.consumer)

    def handled(self, index: int) -> bool:
        """Whether every consumer handled message ``index`` successfully (at least once)."""
        return len(self._ok.get(index, ())) == self.scenario.consumers

    def failed_run(self, run: Run) -> None:
        scenario = self.scenario
        if scenario.consumers > 1 and not scenario.dedup:
            # A retry runs every consumer again, the ones that succeeded too.
            self.touched[run.index].append(SIBLING_FAILED)

    def nacked(self, message: Message, when: float, delay: float) -> None:
        pass

    def unsettleable(self) -> set[int]:
        return set(self._stuck_copies())

    def unsettleable_count(self) -> int:
        return len(self._stuck_copies())

    def _stuck_copies(self) -> list[int]:
        """Messages that stay queued by design on a queue without a dead-letter queue: what
        the policy would dead-letter (it is retried for ever instead), what outlasts its lease
        with the heartbeat off, and on a FIFO queue the later messages of their groups."""
        scenario = self.scenario
        if scenario.dead_letter_queue:
            return []
        stuck: list[int] = []
        blocked_groups: set[int] = set()
        for index in self.publications:
            group = index % scenario.groups
            behaviour, arg = scenario.behaviour(index)
            if behaviour in ("non_retryable", "poison") or (
                # Without the heartbeat, a handler longer than the lease never gets to
                # acknowledge: only a dead-letter queue ends its redeliveries.
                behaviour == "slow"
                and not scenario.heartbeat
                and scenario.semantics == "lease"
                and arg >= scenario.visibility_timeout
            ):
                stuck.append(index)
                blocked_groups.add(group)
            elif scenario.fifo and group in blocked_groups:
                stuck.append(index)
        return stuck


def check(history: History) -> list[str]:
    """Every invariant violated by ``history``, each as a sentence naming the message."""
    problems: list[str] = list(dict.fromkeys(history.violations))
    for rule in (
        _nothing_lost,
        _duplicates,
        _fifo_order,
        _failure_policy,
        _shutdown_drains,
        _stats_add_up,
    ):
        problems.extend(rule(history))
    return problems


def _ok_runs(history: History) -> dict[tuple[str, int], list[Run]]:
    table: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for run in history.runs:
        if run.ok:
            table[(run.consumer, run.index)].append(run)
    return table


def _dead_lettered(history: History) -> dict[int, list[Message]]:
    table: dict[int, list[Message]] = defaultdict(list)
    for message in history.dead_letters:
        table[History.index_of(message.message_id)].append(message)
    return table


def _nothing_lost(history: History) -> list[str]:
    scenario = history.scenario
    ok = _ok_runs(history)
    dead = _dead_lettered(history)
    leftover = {History.index_of(m.message_id) for m in history.leftover}
    stuck = history.unsettleable()
    consumers = [f"consumer{n}" for n in range(scenario.consumers)]
    problems = []
    for index in range(scenario.messages):
        behaviour = scenario.behaviour(index)[0]
        handled = all((c, index) in ok for c in consumers)
        if behaviour == "poison" and handled:
            problems.append(f"message {index} is undecodable but a consumer ran on it")
        for copy in dead.get(index, []):
            if not copy.headers.get(FAILURE_REASON):
                problems.append(f"message {index} was dead-lettered without a reason")
        if handled or index in dead:
            continue
        if index in stuck and index in leftover:
            continue  # retried for ever (or behind one that is) without a dead-letter queue
        problems.append(
            f"message {index} ({behaviour}) was lost: not handled by every consumer "
            f"({sorted(c for c in consumers if (c, index) in ok)} succeeded) and not "
            "dead-lettered"
        )
    expected_left = history.unsettleable_count()
    if history.depth > expected_left:
        problems.append(
            f"the queue still holds {history.depth} message(s) at the end "
            f"({expected_left} expected)"
        )
    return problems


def _duplicates(history: History) -> list[str]:
    scenario = history.scenario
    problems = []
    for (consumer, index), runs in sorted(_ok_runs(history).items()):
        if len(runs) < 2:
            continue
        if scenario.dedup:
            if index not in history.exposed:
                problems.append(
                    f"message {index} was handled {len(runs)} times by {consumer} although "
                    "the deduplication claim was never defeated by a fault"
                )
        elif index not in history.touched:
            problems.append(
                f"message {index} was handled {len(runs)} times by {consumer} although no "
                "fault touched it"
            )
    return problems


def _fifo_order(history: History) -> list[str]:
    scenario = history.scenario
    if not scenario.fifo:
        return []
    runs_of: dict[int, list[Run]] = defaultdict(list)
    for run in history.runs:
        runs_of[run.index].append(run)
    problems = []
    for group in range(scenario.groups):
        members = [i for i in history.publish_order if i % scenario.groups == group]
        for position, earlier in enumerate(members):
            if earlier in history.touched:
                continue
            ended = [r.end for r in runs_of[earlier] if r.end is not None]
            if not ended:
                continue
            last_end = max(ended)
            for later in members[position + 1 :]:
                for run in runs_of[later]:
                    if run.start < last_end:
                        problems.append(
                            f"FIFO order broken in group g{group}: message {later} ran at "
                            f"t={run.start:.3f}s before message {earlier} was done "
                            f"(its last run ended at t={last_end:.3f}s)"
                        )
                        break
    return problems


def _failure_policy(history: History) -> list[str]:
    scenario = history.scenario
    policy = history.policy
    if (
        policy is None
        or scenario.consumers != 1
        or scenario.immediate_retries
        or not scenario.dead_letter_queue
    ):
        return []
    max_attempts = policy.max_attempts or 0
    dead = _dead_lettered(history)
    runs_of: dict[int, list[Run]] = defaultdict(list)
    for run in history.runs:
        runs_of[run.index].append(run)
    problems = []
    for index in range(scenario.messages):
        behaviour, arg = scenario.behaviour(index)
        if behaviour not in ("fail", "hostile", "non_retryable") or index in history.touched:
            continue
        runs = sorted(runs_of[index], key=lambda r: r.start)
        failed = [r for r in runs if r.end is not None and not r.ok]
        if behaviour == "non_retryable":
            expected_failures, dead_lettered = 1, True
        else:
            expected_failures = min(int(arg), max_attempts)
            dead_lettered = int(arg) >= max_attempts
        if len(failed) != expected_failures:
            problems.append(
                f"message {index} ({behaviour}:{arg:g}) failed {len(failed)} times, "
                f"expected {expected_failures} with max_attempts={max_attempts}"
            )
        copies = dead.get(index, [])
        if dead_lettered:
            attempts = [c.headers.get(FAILURE_ATTEMPTS) for c in copies]
            if str(expected_failures) not in attempts:
                problems.append(
                    f"message {index} should be dead-lettered after {expected_failures} "
                    f"attempt(s); dead letters carry attempts {attempts}"
                )
        elif copies:
            problems.append(f"message {index} was dead-lettered although attempt {arg + 1:g} works")
        for number, (before, after) in enumerate(itertools.pairwise(runs), start=1):
            if before.end is None or before.ok:
                continue
            base = min(
                policy.max_delay, policy.initial_delay * policy.backoff_factor ** (number - 1)
            )
            least = base * (1 - policy.jitter) - 1e-6
            if after.start - before.end < least:
                problems.append(
                    f"message {index} was retried {after.start - before.end:.3f}s after failed "
                    f"attempt {number}; the policy waits at least {least:.3f}s"
                )
    return problems


def _shutdown_drains(history: History) -> list[str]:
    problems = []
    for proc in history.processes:
        if proc.graceful and proc.exit_inflight:
            problems.append(
                f"{proc.name} stopped with {proc.exit_inflight} received message(s) neither "
                "settled nor given back"
            )
    return problems


def _stats_add_up(history: History) -> list[str]:
    problems = []
    for proc in history.processes:
        if not proc.graceful:
            continue
        s = proc.stats
        settled = s.acknowledged + s.retried + s.dead_lettered + s.released + s.unsettled
        if s.received != settled:
            problems.append(
                f"{proc.name} stats do not add up: received {s.received} != acknowledged "
                f"{s.acknowledged} + retried {s.retried} + dead_lettered {s.dead_lettered} + "
                f"released {s.released} + unsettled {s.unsettled}"
            )
    return problems


__all__ = ["History", "Run", "check"]
