"""The simulated consumer processes: their tasks, their consume loops and how they die.

A :class:`Process` is one incarnation of a consumer process of the simulation: it holds its
own :class:`~melange.dispatch.engine.Engine` and runs the consume loop the real drivers run
(serial, or a pool of workers that keeps FIFO groups in order) as :class:`Task` steps, each a
generator of effects that :class:`~melange.simulation.world.World` answers on the virtual
clock. Killing a process (SIGKILL) ends its tasks without another effect; stopping it
(SIGTERM) lets the messages in hand finish. The exceptions here are those the world raises
into the engine for injected faults and simulated handler failures.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from melange.dispatch.engine import Engine
from melange.dispatch.groups import GroupOrder
from melange.dispatch.stats import DispatcherStats
from melange.models import Message

if TYPE_CHECKING:
    from melange.simulation.world import World

#: Messages one receive asks for when several workers share a batch (as the real drivers).
BATCH_FOR_WORKERS = 10


class Crashed(BaseException):
    """Thrown into the steps of a process that died, so that they end without effects."""


class ConnectionLost(ConnectionError):
    """A broker or cache call that failed because of an injected fault."""


class HandlerError(RuntimeError):
    """What a failing simulated handler raises."""


class NonRetryable(Exception):
    """What a ``non_retryable`` handler raises; the policy dead-letters it at once."""


class HostileError(Exception):
    """A handler exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("hostile __str__")


# -- effects of the consume loops beyond the engine's ----------------------------------------


@dataclass(slots=True)
class SpawnTask:
    """Start ``step`` as a task of the same process (a worker taking a message)."""

    step: Generator[Any, Any, Any]


@dataclass(slots=True)
class JoinTask:
    """Wait for ``task`` to end; the answer is its result."""

    task: Task


@dataclass(slots=True)
class AcquireSlot:
    """Take a free worker slot, waiting for one (``wait_only``: wait, but do not take it)."""

    wait_only: bool = False


class Task:
    """A step of one process being driven: a generator of effects."""

    __slots__ = (
        "context",
        "done",
        "error",
        "on_done",
        "proc",
        "result",
        "step",
        "waiters",
        "world",
    )

    def __init__(self, world: World, proc: Process, step: Generator[Any, Any, Any]) -> None:
        self.world = world
        self.proc = proc
        self.step = step
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiters: list[Task] = []
        self.on_done: list[Callable[[], None]] = []
        # Each task in a context of its own, as an asyncio task or a worker thread: what one
        # message sets (the message being processed) is not seen by another.
        self.context = contextvars.Context()

    def advance(self, value: Any = None, error: BaseException | None = None) -> None:
        proc = self.proc
        if self.done or proc.dead:
            return
        world = self.world
        if proc.stalled_until > world.now:
            world.at(proc.stalled_until, self.advance, value, error)
            return
        try:
            if error is None:
                effect = self.context.run(self.step.send, value)
            else:
                effect = self.context.run(self.step.throw, error)
        except StopIteration as stop:
            self._finish(stop.value, None)
        except BaseException as exc:
            self._finish(None, exc)
        else:
            world.perform(self, effect)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self.done, self.result, self.error = True, result, error
        self.proc.tasks.pop(self, None)
        for waiter in self.waiters:
            self.world.at(self.world.now, waiter.advance, result)
        self.waiters.clear()
        for callback in self.on_done:
            callback()
        if self is self.proc.main:
            self.proc.exited(error)

    def kill(self) -> None:
        """End the step without performing anything more (its process died)."""
        if self.done:
            return
        self.done = True
        step, run = self.step, self.context.run
        try:
            run(step.throw, Crashed())
            while True:
                run(step.throw, Crashed())
        except BaseException:
            pass


class Process:
    """One incarnation of a simulated consumer process (slot ``slot``)."""

    def __init__(self, world: World, slot: int, incarnation: int) -> None:
        self.world = world
        self.slot = slot
        self.name = f"p{slot}.{incarnation}"
        self.dead = False
        self.gone = False  # exited or dead
        self.graceful = False
        # Stalled or cut off at some point: its leases may have run out.
        self.disrupted = False
        self.exit_inflight = 0
        self.stop_requested = False
        self.stalled_until = 0.0
        self.cut_until = 0.0
        # Broker replies to this process come ``slow_by`` seconds late until ``slow_until``.
        self.slow_until = 0.0
        self.slow_by = 0.0
        self.epoch = 0
        self.tasks: dict[Task, None] = {}  # ordered: runs must not depend on addresses
        self.main: Task | None = None
        # Messages received and not settled: id(message) -> (message, epoch).
        self.inflight: dict[int, tuple[Message, int]] = {}
        self.leases: dict[object, tuple[str, Any, float]] = {}
        self.claims_held: set[str] = set()
        self.sleepers: dict[Task, int] = {}
        self.free = world.scenario.workers
        self.slot_waiters: list[tuple[Task, bool]] = []
        self.stats = DispatcherStats()
        self.cache = world.cache_view()
        scenario = world.scenario
        self.engine = Engine(
            world.registry,
            world.route,
            world.policy,
            self.stats,
            deduplicate=scenario.dedup,
            lease=scenario.dedup_lease,
            fail_open=scenario.fail_open,
            always_ack=False,
            watch_messages=scenario.heartbeat,
            check_holds=scenario.semantics == "connection",
            stopping=lambda: self.stop_requested,
            rng=random.Random(world.rng.random()),
            clock=world.clock,
        )
        world.history.processes.append(self)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        loop = self._serial() if self.world.scenario.workers == 1 else self._pool()
        self.main = self.spawn(loop)

    def spawn(self, step: Generator[Any, Any, Any]) -> Task:
        task = Task(self.world, self, step)
        self.tasks[task] = None
        self.world.at(self.world.now, task.advance)
        return task

    def exited(self, error: BaseException | None) -> None:
        """The consume loop returned (or raised): the process exits."""
        if self.gone:
            return
        self.gone = True
        self.graceful = True
        self.exit_inflight = sum(1 for _, epoch in self.inflight.values() if epoch == self.epoch)
        self.world.history.note(f"{self.name} exited" + (f" ({error!r})" if error else ""))
        for task in list(self.tasks):
            task.kill()
        self.world.process_gone(self)

    def die(self, why: str) -> None:
        """SIGKILL: nothing more happens in this process."""
        if self.gone:
            return
        self.world.history.note(f"{self.name} died: {why}")
        self.dead = self.gone = True
        history = self.world.history
        for message, _ in self.inflight.values():
            history.touch(message, f"{why} while in hand")
        for key in self.claims_held:
            history.expose_key(key, why)
        for task in list(self.tasks):
            task.kill()
        self.tasks.clear()
        if self.world.scenario.semantics == "connection":
            self.world.give_back_inflight(self)
        self.inflight.clear()
        self.world.process_gone(self)

    def request_stop(self) -> None:
        """SIGTERM: finish what is in hand, give the rest back, exit."""
        if self.gone:
            return
        self.stop_requested = True
        self.world.stop_polling(self)
        for task in list(self.sleepers):
            self.world.at(self.world.now, task.advance)
        self.sleepers.clear()

    # -- the consume loops (as the threaded and asyncio drivers schedule) ---------------------

    def _options(self, batch: int) -> dict[str, Any]:
        return {"max_messages": batch, "wait_seconds": 0}

    def _serial(self) -> Generator[Any, Any, None]:
        engine, queue = self.engine, self.world.queue
        options = self._options(self.world.scenario.batch)
        while not self.stop_requested:
            messages = yield from engine.receive(queue, options)
            if messages:
                try:
                    yield from engine.dispatch(messages, queue.name)
                except Exception:
                    continue

    def _pool(self) -> Generator[Any, Any, None]:
        engine, queue = self.engine, self.world.queue
        workers = self.world.scenario.workers
        options = self._options(min(BATCH_FOR_WORKERS, workers))
        order: GroupOrder[Task] = GroupOrder()
        while not self.stop_requested:
            yield AcquireSlot(wait_only=True)
            messages = yield from engine.receive(queue, options)
            order.new_batch()
            for message in messages:
                yield AcquireSlot()
                group = message.group_id
                before, same_batch = order.before(group)
                task = yield SpawnTask(self._work(message, before, same_batch))
                if group is not None:
                    order.started(group, task)
                    task.on_done.append(lambda task=task, group=group: order.finished(group, task))
        # Drain: wait for the messages in hand.
        for task in list(self.tasks):
            if task is not self.main and not task.done:
                yield JoinTask(task)

    def _work(
        self, message: Message, before: Task | None, same_batch: bool
    ) -> Generator[Any, Any, bool]:
        try:
            go_ahead = True
            if before is not None:
                previous = yield JoinTask(before)
                go_ahead = Engine.may_go_ahead(bool(previous), same_batch)
            return bool((yield from self.engine.process(message, self.world.queue.name, go_ahead)))
        except (SystemExit, KeyboardInterrupt):
            self.request_stop()
            return False
        except Exception:
            return False
        finally:
            self.free += 1
            self.world.wake_slot_waiters(self)


__all__ = [
    "BATCH_FOR_WORKERS",
    "AcquireSlot",
    "ConnectionLost",
    "Crashed",
    "HandlerError",
    "HostileError",
    "JoinTask",
    "NonRetryable",
    "Process",
    "SpawnTask",
    "Task",
]
