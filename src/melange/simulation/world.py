"""The simulation driver: the real dispatch engine on a virtual clock, with injected faults.

Each simulated consumer process runs its own :class:`~melange.dispatch.engine.Engine` (the
one the threaded and asyncio dispatchers run) with its own consume loop, serial or with
workers as the real drivers schedule them. Instead of performing the engine's effects with
real I/O, :class:`World` answers them: broker calls go to a real
:class:`~melange.backends.memory.InMemoryMessagingBackend` (or an SQLite one) on the virtual
clock, deduplication claims to a real :class:`~melange.deduplication.cache.InMemoryCache`,
and consumers are played from the scenario's handler behaviours. Every call takes a little
virtual time, so the steps of the processes interleave; the order in which simultaneous
steps run is drawn from the seed.

A fault (:mod:`melange.simulation.scenario`) changes what an effect does: a crashed process
never runs another step, a dropped reply raises after the broker acted, a cut connection
makes calls fail and, on a connection-semantics broker, hands the messages in hand back to
the queue, a stalled process stops renewing its leases.

Everything the processes did is written to a :class:`~melange.simulation.invariants.History`
that the invariants are checked against. The run is a pure function of the scenario: no
thread, no wall clock, no unseeded randomness.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.deduplication.cache import ClaimState, InMemoryCache
from melange.dispatch.decisions import Route
from melange.dispatch.effects import (
    Ack,
    Claim,
    DeadLetter,
    FinishClaim,
    Holds,
    Invoke,
    Nack,
    ProbeCache,
    Receive,
    Release,
    Sleep,
    Unwatch,
    Watch,
)
from melange.dispatch.leases import RENEWAL_FRACTION
from melange.dispatch.policy import FailurePolicy
from melange.models import Message
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry
from melange.simulation.invariants import History, Run
from melange.simulation.processes import (
    AcquireSlot,
    ConnectionLost,
    HandlerError,
    HostileError,
    JoinTask,
    NonRetryable,
    Process,
    SpawnTask,
    Task,
)
from melange.simulation.scenario import Fault, Scenario

#: Seconds a receive waits for messages before it returns empty (a long poll).
LONG_POLL_SECONDS = 20.0
#: Seconds before a process that exited or died is started again (a supervisor).
RESTART_SECONDS = 2.0
#: Seconds after the last fault by which every message must be handled or dead-lettered.
DRAIN_LIMIT_SECONDS = 7200.0
#: Receive count after which the broker dead-letters by itself (its backstop).
BROKER_MAX_RECEIVES = 20


@dataclass
class _Call:
    """What the faults do to the next call of a kind, per process slot."""

    drop_reply: set[str] = field(default_factory=set)
    drop_request: set[str] = field(default_factory=set)
    crash_at: set[str] = field(default_factory=set)


class World:
    """Runs one :class:`~melange.simulation.scenario.Scenario`; see the module doc."""

    def __init__(
        self,
        scenario: Scenario,
        broker: str = "memory",
        tmp: Path | None = None,
        trace: bool = False,
    ) -> None:
        self.scenario = scenario
        self.tracing = trace
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self._events: list[tuple[float, float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.history = History(scenario)
        self.backend = self._make_backend(broker, tmp)
        self.cache_entries: dict[str, Any] = {}
        self._cache_views = itertools.count()
        self.cache_down_until = 0.0
        self.cache_slow_until = 0.0
        self.cache_slow_by = 0.0
        self.policy = FailurePolicy(
            max_attempts=scenario.max_attempts,
            immediate_retries=scenario.immediate_retries,
            initial_delay=scenario.initial_delay,
            non_retryable=(NonRetryable,),
        )
        self.history.policy = self.policy
        self.registry = SerializerRegistry.coerce(JsonSerializer())
        self.route = Route(
            Consumer(on_message=_never_called, name=f"consumer{n}")
            for n in range(scenario.consumers)
        )
        fifo = ".fifo" if scenario.fifo else ""
        dlq_name = f"sim-dlq{fifo}" if scenario.dead_letter_queue else None
        self.queue, _ = self.backend.declare_queue(
            f"sim{fifo}",
            dead_letter_queue_name=dlq_name,
            # A connection-semantics broker (RabbitMQ) has no lease: messages come back when
            # their connection goes (or after its consumer timeout, 30 minutes by default).
            visibility_timeout=scenario.visibility_timeout
            if scenario.semantics == "lease"
            else 1800.0,
            max_receive_count=BROKER_MAX_RECEIVES,
        )
        self.dead_letter_queue_name = dlq_name
        self.calls = [_Call() for _ in range(scenario.processes)]
        self.processes: list[Process | None] = [None] * scenario.processes
        self.incarnations = [0] * scenario.processes
        self.draining = False
        self.finished = False
        self.handler_runs: dict[tuple[str, int], int] = {}
        self._pollers: dict[Task, tuple[Receive, float]] = {}
        self.table: dict[type, Callable[[Task, Any], None]] = {
            Receive: self._receive,
            Holds: self._holds,
            Invoke: self._invoke,
            Claim: self._claim,
            FinishClaim: self._finish_claim,
            ProbeCache: self._probe,
            Watch: self._watch,
            Unwatch: self._unwatch,
            Ack: self._ack,
            Nack: self._nack,
            Release: self._release,
            DeadLetter: self._dead_letter,
            Sleep: self._sleep,
            SpawnTask: self._spawn,
            JoinTask: self._join,
            AcquireSlot: self._acquire,
        }

    def _make_backend(self, broker: str, tmp: Path | None) -> MessagingBackend:
        if broker == "memory":
            return InMemoryMessagingBackend(clock=self.clock)
        if broker == "sqlite":
            from melange.backends.sqlite import SQLiteBackend

            path = (tmp or Path(".")) / f"sim-{self.scenario.seed}.sqlite3"
            return SQLiteBackend(path, clock=self.clock)
        raise ValueError(f"unknown simulated broker {broker!r}: memory or sqlite")

    def clock(self) -> float:
        return self.now

    def cache_view(self) -> InMemoryCache:
        """A process's handle on the shared cache: shared entries, its own claim identity
        (as two processes' clients of one Redis)."""
        view = InMemoryCache(clock=self.clock)
        view._entries = self.cache_entries
        return view

    # -- the event loop ---------------------------------------------------------------------

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        # Simultaneous events run in an order drawn from the seed: that is the interleaving.
        heapq.heappush(self._events, (when, self.rng.random(), next(self._seq), fn, args))

    def run(self) -> History:
        """Run the scenario to its end and return what happened."""
        scenario = self.scenario
        for slot in range(scenario.processes):
            self._start(slot)
        for index in range(scenario.messages):
            when = round(self.rng.uniform(0, scenario.publish_span), 4) if index else 0.0
            self.at(when, self._publish, index)
        for fault in scenario.faults:
            self.at(fault.at, self._inject, fault)
        last = max([f.at + f.duration for f in scenario.faults] + [scenario.publish_span])
        self.at(last + 1.0, self._begin_drain)
        events = self._events
        limit = last + DRAIN_LIMIT_SECONDS
        while events and not self.finished:
            when, _, _, fn, args = heapq.heappop(events)
            if when > limit:
                self.history.note(f"drain limit reached at t={when:.1f}s")
                break
            self.now = max(self.now, when)
            fn(*args)
        self.history.end = self.now
        self.history.depth = self._depth(self.queue.name)
        self.history.dead_letters = self._dead_letters()
        self.history.leftover = self._peek(self.queue.name)
        self.backend.close_connection()
        return self.history

    def _depth(self, name: str) -> int:
        depth = getattr(self.backend, "queue_depth", None)
        return int(depth(name)) if depth is not None else 0

    def _peek(self, name: str) -> list[Message]:
        peek = getattr(self.backend, "peek", None)
        if peek is None:
            return []
        try:
            return list(peek(name, limit=1_000_000))
        except TypeError:  # the in-memory backend shows every message
            return list(peek(name))

    # -- processes --------------------------------------------------------------------------

    def _start(self, slot: int) -> None:
        self.incarnations[slot] += 1
        proc = Process(self, slot, self.incarnations[slot])
        self.processes[slot] = proc
        proc.start()

    def process_gone(self, proc: Process) -> None:
        if self.processes[proc.slot] is proc and not self.finished:
            self.at(self.now + RESTART_SECONDS, self._restart, proc.slot, proc)

    def _restart(self, slot: int, proc: Process) -> None:
        if self.processes[slot] is proc and not self.finished:
            self._start(slot)

    def _begin_drain(self) -> None:
        """Faults are over: let the processes finish the work, then stop them."""
        self.draining = True
        self._check_done()

    def _check_done(self) -> None:
        if self.finished:
            return
        if self._settled():
            for proc in self.processes:
                if proc is not None and not proc.gone:
                    proc.request_stop()
            self.at(self.now + 1.0, self._finish_when_stopped)
            return
        self.at(self.now + 5.0, self._check_done)

    def _finish_when_stopped(self) -> None:
        live = [p for p in self.processes if p is not None and not p.gone]
        if not live:
            self.finished = True
            return
        self.at(self.now + 1.0, self._finish_when_stopped)

    def _settled(self) -> bool:
        """Whether the work is done: nothing left in the queue but what can never be."""
        depth = self._depth(self.queue.name)
        if depth == 0:
            return True
        history = self.history
        if depth > history.unsettleable_count():
            return False
        # What is left may be what can never be settled, or the last of the rest.
        stuck = history.unsettleable()
        dead = {History.index_of(m.message_id) for m in self._dead_letters()}
        return all(
            index in stuck or index in dead or history.handled(index)
            for index in range(self.scenario.messages)
        )

    def _dead_letters(self) -> list[Message]:
        return self._peek(self.dead_letter_queue_name) if self.dead_letter_queue_name else []

    def give_back_inflight(self, proc: Process) -> None:
        """The broker noticed a lost connection: what it delivered there is queued again."""
        for message, epoch in list(proc.inflight.values()):
            if epoch == proc.epoch:
                self.history.touch(message, "connection lost while in hand")
                self.backend.release(message)

    # -- publishing -------------------------------------------------------------------------

    def _publish(self, index: int, copy: bool = False) -> None:
        scenario = self.scenario
        behaviour, _ = scenario.behaviour(index)
        message = Message(
            f"{scenario.seed}-{index}",
            json.dumps({"i": index}),
            None,
            # A serializer id no dispatcher has: undecodable.
            99 if behaviour == "poison" else JsonSerializer().identifier(),
            "sim",
        )
        if scenario.fifo:
            message.group_id = f"g{index % scenario.groups}"
            message.deduplication_id = f"{message.message_id}-{copy}"
        self.history.published_at(index, message, self.now, copy)
        self.backend.publish_to_queue(message, self.queue)
        self.wake_pollers()

    # -- faults -----------------------------------------------------------------------------

    def _inject(self, fault: Fault) -> None:
        self.history.note(f"fault: {fault}")
        proc = self.processes[fault.process]
        kind = fault.kind
        if kind == "duplicate":
            published = self.history.published_indexes()
            if published:
                index = published[self.rng.randrange(len(published))]
                self.history.touch_index(index, "duplicate delivery")
                self._publish(index, copy=True)
            return
        if kind == "cache_down":
            self.cache_down_until = max(self.cache_down_until, self.now + fault.duration)
            return
        if kind == "cache_slow":
            self.cache_slow_until = self.now + 10.0
            self.cache_slow_by = fault.duration
            return
        calls = self.calls[fault.process]
        if kind == "drop_reply":
            calls.drop_reply.add(fault.point)
            return
        if kind == "drop_request":
            calls.drop_request.add(fault.point)
            return
        if kind == "crash_at":
            calls.crash_at.add(fault.point)
            return
        if proc is None or proc.gone:
            return
        if kind == "crash":
            proc.die("crash")
        elif kind == "stop":
            proc.request_stop()
        elif kind == "stop_twice":
            proc.request_stop()
            self.at(self.now + fault.duration, self._second_signal, proc)
        elif kind == "cut":
            self._cut(proc, fault.duration)
        elif kind == "broker_slow":
            proc.slow_until = self.now + 10.0
            proc.slow_by = fault.duration
        elif kind == "stall":
            proc.disrupted = True
            proc.stalled_until = max(proc.stalled_until, self.now + fault.duration)
            for message, _ in proc.inflight.values():
                self.history.touch(message, "process stalled while in hand")
            for key in proc.claims_held:
                self.history.expose_key(key, "stalled while holding the claim")
        else:  # pragma: no cover - FAULT_KINDS lists every kind handled above
            raise ValueError(f"unknown fault kind {kind!r}")

    def _second_signal(self, proc: Process) -> None:
        if not proc.gone:
            proc.die("second signal")

    def _cut(self, proc: Process, duration: float) -> None:
        proc.disrupted = True
        proc.cut_until = max(proc.cut_until, self.now + duration)
        for message, _ in proc.inflight.values():
            self.history.touch(message, "connection cut while in hand")
        if self.scenario.semantics == "connection":
            self.give_back_inflight(proc)
            proc.epoch += 1

    def _crash_point(self, proc: Process, point: str) -> bool:
        """Whether an armed ``crash_at`` fault kills ``proc`` here (it then has)."""
        armed = self.calls[proc.slot].crash_at
        if point in armed:
            armed.discard(point)
            proc.die(f"crash {point}")
            return True
        return False

    def _broker_call(self, proc: Process, point: str) -> str:
        """Faults on a broker call: ``"fail"`` (not performed), ``"lost"`` (performed, the
        reply lost) or ``""``."""
        if proc.cut_until > self.now:
            return "fail"
        calls = self.calls[proc.slot]
        if point in calls.drop_request:
            calls.drop_request.discard(point)
            return "fail"
        if point in calls.drop_reply:
            calls.drop_reply.discard(point)
            return "lost"
        return ""

    def _latency(self) -> float:
        return self.rng.uniform(0.0005, 0.004)

    def _broker_latency(self, proc: Process) -> float:
        latency = self._latency()
        if proc.slow_until > self.now:
            latency += proc.slow_by
        return latency

    def _reply(self, task: Task, value: Any = None, delay: float | None = None) -> None:
        if delay is None:
            delay = self._broker_latency(task.proc)
        self.at(self.now + delay, task.advance, value)

    def _fail(self, task: Task, error: BaseException, delay: float | None = None) -> None:
        if delay is None:
            delay = self._broker_latency(task.proc)
        self.at(self.now + delay, task.advance, None, error)

    # -- performing effects -----------------------------------------------------------------

    def perform(self, task: Task, effect: Any) -> None:
        if self.tracing:
            self.history.note(f"t={self.now:.4f} {task.proc.name} {_describe(effect)}")
        self.table[type(effect)](task, effect)

    def _receive(self, task: Task, effect: Receive, deadline: float | None = None) -> None:
        proc = task.proc
        if proc.gone:
            return
        fault = self._broker_call(proc, "receive")
        if fault == "fail":
            self._fail(task, ConnectionLost("receive failed"))
            return
        options = {**effect.options, "wait_seconds": 0}
        messages = self.backend.retrieve_messages(effect.queue, **options)
        if not messages and not fault and not proc.stop_requested:
            # A long poll: wait until something may have become visible, or the wait ends.
            if deadline is None:
                deadline = self.now + LONG_POLL_SECONDS
            if self.now < deadline:
                self._pollers[task] = (effect, deadline)
                self.at(deadline, self._poll_again, task, effect, deadline)
                return
        history = self.history
        for message in messages:
            history.received(message, proc, self.processes)
            if fault == "lost":
                history.touch(message, "receive reply lost")
        if fault == "lost":
            if self.scenario.semantics == "connection":
                for message in messages:
                    self.backend.release(message)
            self._fail(task, ConnectionLost("receive reply lost"))
            return
        for message in messages:
            proc.inflight[id(message)] = (message, proc.epoch)
        if messages:
            lease = self.backend.visibility_timeout_for(messages[0]) or 0.0
            self.wake_pollers(self.now + lease + 0.001)  # when their leases could run out
        if messages and self._crash_point(proc, "after_receive"):
            return
        delay = self._broker_latency(proc)
        if messages and self.scenario.semantics == "lease":
            lease = self.backend.visibility_timeout_for(messages[0]) or 0.0
            if delay >= lease:
                # Answered after the leases ran out: another process may have the messages.
                for message in messages:
                    history.touch(message, "receive answered after the lease ran out")
        self._reply(task, messages, delay)

    def _poll_again(self, task: Task, effect: Receive, deadline: float) -> None:
        if self._pollers.get(task, (None, None))[1] == deadline:
            del self._pollers[task]
            self._receive(task, effect, deadline)

    def wake_pollers(self, when: float | None = None) -> None:
        """Something may be visible (now, or at ``when``): waiting receives look again."""
        if when is not None and when > self.now:
            self.at(when, self.wake_pollers)
            return
        for task, (effect, deadline) in list(self._pollers.items()):
            del self._pollers[task]
            self.at(self.now, self._receive, task, effect, deadline)

    def stop_polling(self, proc: Process) -> None:
        """The process was asked to stop: its waiting receive returns (``interrupt``)."""
        for task in [t for t in self._pollers if t.proc is proc]:
            del self._pollers[task]
            self._reply(task, [])

    def _holds(self, task: Task, effect: Holds) -> None:
        proc = task.proc
        entry = proc.inflight.get(id(effect.message))
        holds = entry is not None and entry[1] == proc.epoch and proc.cut_until <= self.now
        if not holds:
            proc.inflight.pop(id(effect.message), None)
        task.advance(holds)

    def _invoke(self, task: Task, effect: Invoke) -> None:
        proc = task.proc
        if self._crash_point(proc, "before_handler"):
            return
        index = int(effect.payload["i"])
        consumer = effect.consumer.name
        key = (consumer, index)
        number = self.handler_runs[key] = self.handler_runs.get(key, 0) + 1
        behaviour, arg = self.scenario.behaviour(index)
        error: BaseException | None = None
        duration = self.rng.uniform(0.001, 0.05)
        if behaviour == "fail" and number <= arg:
            error = HandlerError(f"run {number} of message {index} failed")
        elif behaviour == "hostile" and number <= arg:
            error = HostileError()
        elif behaviour == "non_retryable":
            error = NonRetryable(f"message {index} can never be handled")
        elif behaviour == "exit" and number == 1:
            error = SystemExit(3)
        elif behaviour == "slow":
            duration = arg
        run = Run(proc.name, consumer, index, self.now, epoch=proc.epoch)
        self.history.runs.append(run)
        self.at(self.now + duration, self._invoke_done, task, run, error)

    def _invoke_done(self, task: Task, run: Run, error: BaseException | None) -> None:
        proc = task.proc
        if proc.dead:
            return
        if proc.stalled_until > self.now:
            self.at(proc.stalled_until, self._invoke_done, task, run, error)
            return
        run.end = self.now
        run.ok = error is None
        if run.ok:
            self.history.succeeded(run)
        if error is not None:
            self.history.failed_run(run)
        if self._crash_point(proc, "after_handler"):
            return
        task.advance(None, error)

    # -- the deduplication cache --------------------------------------------------------------

    def _cache_call(self, task: Task, fn: Callable[[], Any], key: str | None = None) -> None:
        if self.cache_down_until > self.now:
            if key is not None:
                self.history.expose_key(key, "cache unreachable")
            self._fail(task, ConnectionLost("cache unreachable"))
            return
        delay = self._latency()
        if self.cache_slow_until > self.now:
            delay += self.cache_slow_by
        self._reply(task, fn(), delay)

    def _claim(self, task: Task, effect: Claim) -> None:
        proc = task.proc
        if self.cache_down_until > self.now and self.scenario.fail_open:
            # Processed without deduplication: a duplicate may follow.
            self.history.expose_key(effect.key, "processed without deduplication (fail open)")

        def claim() -> ClaimState:
            state = proc.cache.claim(effect.key, effect.lease)
            if state is ClaimState.CLAIMED:
                proc.claims_held.add(effect.key)
            return state

        self._cache_call(task, claim)

    def _finish_claim(self, task: Task, effect: FinishClaim) -> None:
        proc = task.proc
        if effect.done and self._crash_point(proc, "before_done"):
            return

        def finish() -> None:
            proc.claims_held.discard(effect.key)
            if effect.done:
                proc.cache.mark_done(effect.key)
                self.history.claim_done(effect.key, self.now)
            else:
                proc.cache.release(effect.key)

        self._cache_call(task, finish, effect.key)

    def _probe(self, task: Task, effect: ProbeCache) -> None:
        self._cache_call(task, lambda: None)

    # -- leases -----------------------------------------------------------------------------

    def _watch(self, task: Task, effect: Watch) -> None:
        proc = task.proc
        since = self.now if effect.since is None else effect.since
        for message in effect.messages:
            lease = self.backend.visibility_timeout_for(message)
            if lease:
                key = id(message)
                if key in proc.leases and proc.leases[key][1] is message:
                    continue  # already renewed on its own schedule
                self._renew_later(proc, key, ("message", message, lease), since)
        if effect.key is not None:
            self._renew_later(proc, ("claim", effect.key), ("claim", effect.key, effect.lease))
        task.advance(None)

    def _renew_later(
        self, proc: Process, key: object, entry: tuple[str, Any, float], since: float | None = None
    ) -> None:
        proc.leases[key] = entry
        due = (self.now if since is None else since) + entry[2] * RENEWAL_FRACTION
        self.at(max(self.now, due), self._renew, proc, key, entry)

    def _renew(self, proc: Process, key: object, entry: tuple[str, Any, float]) -> None:
        if proc.gone or proc.leases.get(key) is not entry:
            return
        if proc.stalled_until > self.now:
            self.at(proc.stalled_until, self._renew, proc, key, entry)
            return
        kind, target, lease = entry
        if kind == "message":
            if proc.cut_until <= self.now:
                self.backend.extend_visibility(target, lease)
        elif self.cache_down_until <= self.now:
            if not proc.cache.renew(target, lease):
                self.history.expose_key(target, "claim lost")
                proc.leases.pop(key, None)
                return
        else:
            self.history.expose_key(target, "claim not renewed: cache unreachable")
        self.at(self.now + lease * RENEWAL_FRACTION, self._renew, proc, key, entry)

    def _unwatch(self, task: Task, effect: Unwatch) -> None:
        proc = task.proc
        for message in effect.messages:
            proc.leases.pop(id(message), None)
        if effect.key is not None:
            proc.leases.pop(("claim", effect.key), None)
        task.advance(None)

    # -- settling ---------------------------------------------------------------------------

    def _settle(
        self,
        task: Task,
        point: str,
        messages: Any,
        apply: Callable[[], Any],
        label: str,
        delay: float = 0.0,
    ) -> None:
        proc = task.proc
        for message in messages:
            proc.inflight.pop(id(message), None)
        fault = self._broker_call(proc, point)
        if fault == "fail":
            for message in messages:
                self.history.touch(message, f"{label} failed")
            self._fail(task, ConnectionLost(f"{label} failed"))
            return
        result = apply()
        self.wake_pollers(self.now + delay + 0.001 if delay else None)
        if fault == "lost":
            for message in messages:
                self.history.touch(message, f"{label} reply lost")
            self._fail(task, ConnectionLost(f"{label} reply lost"))
            return
        self._reply(task, result)

    def _ack(self, task: Task, effect: Ack) -> None:
        proc = task.proc
        messages = list(effect.messages)
        if self._crash_point(proc, "before_ack"):
            return
        if len(messages) > 1 and "during_ack" in self.calls[proc.slot].crash_at:
            half = messages[: len(messages) // 2]
            self.backend.acknowledge_batch(half)
            for message in half:
                proc.inflight.pop(id(message), None)
            self._crash_point(proc, "during_ack")
            return
        self._settle(task, "ack", messages, lambda: self.backend.acknowledge_batch(messages), "ack")

    def _nack(self, task: Task, effect: Nack) -> None:
        message = effect.message
        self.history.nacked(message, self.now, effect.delay)
        self._settle(
            task,
            "nack",
            [message],
            lambda: self.backend.nack(message, effect.delay),
            "nack",
            effect.delay,
        )

    def _release(self, task: Task, effect: Release) -> None:
        message = effect.message
        self._settle(
            task,
            "release",
            [message],
            lambda: self.backend.release(message, effect.delay),
            "release",
            effect.delay,
        )

    def _dead_letter(self, task: Task, effect: DeadLetter) -> None:
        message = effect.message
        self._settle(
            task,
            "dead_letter",
            [message],
            lambda: self.backend.dead_letter(message, effect.headers),
            "dead-letter",
        )

    def _sleep(self, task: Task, effect: Sleep) -> None:
        proc = task.proc
        if proc.stop_requested:
            task.advance(None)
            return
        token = next(self._seq)
        proc.sleepers[task] = token
        self.at(self.now + effect.seconds, self._wake_sleeper, task, token)

    def _wake_sleeper(self, task: Task, token: int) -> None:
        if task.proc.sleepers.get(task) == token:
            del task.proc.sleepers[task]
            task.advance(None)

    # -- the loops' own effects ---------------------------------------------------------------

    def _spawn(self, task: Task, effect: SpawnTask) -> None:
        proc = task.proc
        child = proc.spawn(effect.step)
        task.advance(child)

    def _join(self, task: Task, effect: JoinTask) -> None:
        target = effect.task
        if target.done:
            task.advance(target.result)
        else:
            target.waiters.append(task)

    def _acquire(self, task: Task, effect: AcquireSlot) -> None:
        proc = task.proc
        if proc.free > 0:
            if not effect.wait_only:
                proc.free -= 1
            task.advance(None)
        else:
            proc.slot_waiters.append((task, effect.wait_only))

    def wake_slot_waiters(self, proc: Process) -> None:
        while proc.slot_waiters and proc.free > 0:
            waiter, wait_only = proc.slot_waiters.pop(0)
            if not wait_only:
                proc.free -= 1
            self.at(self.now, waiter.advance, None)


def _describe(effect: Any) -> str:
    name = type(effect).__name__
    messages = getattr(effect, "messages", None) or (
        [effect.message] if isinstance(getattr(effect, "message", None), Message) else []
    )
    parts = [name]
    if messages:
        parts.append(",".join(m.message_id.rsplit("-", 1)[1] for m in messages))
    if isinstance(effect, Invoke):
        parts.append(f"{effect.consumer.name} on {effect.payload['i']}")
    for attr in ("delay", "key", "seconds", "done"):
        value = getattr(effect, attr, None)
        if value not in (None, 0, 0.0):
            parts.append(f"{attr}={value}")
    return " ".join(parts)


def _never_called(payload: Any) -> None:  # pragma: no cover - the world plays the handlers
    raise AssertionError("simulated consumers are played by the world, not called")


@contextlib.contextmanager
def engine_logs_silenced() -> Iterator[None]:
    """The engine logs every failure; thousands of runs need none of it."""
    logger = logging.getLogger("melange.dispatcher")
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


__all__ = ["World", "engine_logs_silenced"]
