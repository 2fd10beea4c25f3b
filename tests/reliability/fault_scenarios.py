"""Consumer processes killed or told to stop mid-stream: the scenarios every durable backend
runs (``test_process_faults.py`` on the shared brokers, ``tests/kafka/test_kafka_faults.py``
on a tansu broker), each checking from the journal what ran how often.

A scenario takes a :class:`WorkQueue`: a queue of the test's own holding ``{"n": i}`` for
``i`` in ``range(count)``, which can say how many messages are left on it.

:func:`connection_cut_loses_nothing` cuts a consumer's connections instead, through a TCP
relay in front of the shared broker (the Redis Streams and kombu backends run it).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reliability_support import Journal, redis_keys, spawn_worker, stop_process, wait_for

from melange import Consumer, FailurePolicy, MessageDispatcher
from melange.aio import AsyncMessageDispatcher
from melange.serializers.json import JsonSerializer

if TYPE_CHECKING:
    from tcp_relay import TcpRelay


class WorkQueue(Protocol):
    """The queue a scenario's consumer processes work on."""

    spec: dict[str, Any]
    queue: str
    dlq: str
    #: Whether :meth:`left` counts messages handed out and not yet acknowledged, so that a
    #: scenario can wait for "every message acknowledged" while consumers still run.
    counts_in_flight: bool

    def left(self, queue: str | None = None) -> int:
        """Messages still on ``queue`` (the work queue by default)."""


def assert_emptied(work: WorkQueue) -> None:
    """Nothing is left on the work queue nor its dead-letter queue. Polled for a few seconds:
    a broker's count of messages held by consumers may be sampled (RabbitMQ's management
    API, every 5 s), and lag behind a consumer that just acknowledged and left."""
    wait_for(lambda: work.left() == 0, 15, "the work queue to be empty")
    assert work.left(work.dlq) == 0


def completed(journal: Path) -> int:
    """Handler runs that finished."""
    return sum(Journal.read(journal).ends.values())


def all_done(journal: Path, count: int, work: WorkQueue) -> Callable[[], bool]:
    """Every message processed; and acknowledged, where the queue can tell while its
    consumers run (elsewhere that is checked once they are gone)."""

    def check() -> bool:
        if set(Journal.read(journal).ends) != set(range(count)):
            return False
        return not work.counts_in_flight or work.left() == 0

    return check


def _unfinished(journal: Path, count: int, work: WorkQueue) -> str:
    """What a scenario that timed out was still waiting for, and what its workers logged."""
    missing = sorted(set(range(count)) - set(Journal.read(journal).ends))
    logs = []
    for log in sorted(journal.parent.glob(journal.name + ".*.log")):
        lines = log.read_text(errors="replace").splitlines()
        logs.append(f"--- {log.name} (last lines)\n" + "\n".join(lines[-15:]))
    return (
        f"{len(missing)} message(s) never handled: {missing[:20]}; {work.left()} left on the "
        "queue\n" + "\n".join(logs)
    )


def worker_config(work: WorkQueue, journal: Path, **extra: Any) -> dict[str, Any]:
    """The configuration of ``consumer_worker.py`` for ``work``."""
    return {"backend": work.spec, "queue": work.queue, "journal": str(journal), **extra}


def kill_then_finish(
    work: WorkQueue,
    journal: Path,
    count: int,
    config: dict[str, Any],
    progress: int,
    at_kill: Callable[[], object] = lambda: None,
) -> Journal:
    """Run a consumer until it finished ``progress`` messages, SIGKILL it (then call
    ``at_kill``), run another to the end and stop it with SIGTERM; returns the journal as it
    was at the kill."""
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= progress, 60, "the first consumer to progress")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        journal_at_kill = Journal.read(journal)
        at_kill()
        second = spawn_worker(config)
        wait_for(all_done(journal, count, work), 90, "every message to be processed")
        # A message its handler finished but whose deduplication claim the killed process
        # still held is given back until the claim runs out: it comes back before the stop.
        wait_for(lambda: work.left() == 0, 30, "nothing to be left on the queue")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    return journal_at_kill


def sigkill_loses_nothing(
    work: WorkQueue,
    tmp_path: Path,
    count: int,
    label: str,
    batch: int = 10,
    driver: str = "threaded",
) -> None:
    """A consumer SIGKILLed mid-stream loses nothing; what it had finished but not yet
    acknowledged runs again, at most its batch of ``batch`` messages."""
    journal = tmp_path / "journal"
    config = worker_config(work, journal, delay=0.005, max_messages=batch, driver=driver)
    at_kill = kill_then_finish(work, journal, count, config, count // 3 + 5)
    final = Journal.read(journal)
    repeated = {n for n, c in final.ends.items() if c > 1}
    print(
        f"\n[{label}] SIGKILL after {sum(at_kill.ends.values())} of {count} handled: "
        f"{len(repeated)} message(s) processed twice (bound: batch of {batch}), 0 lost"
    )
    assert set(final.ends) == set(range(count))
    assert len(repeated) <= batch
    # Only messages the killed process had finished can run again.
    assert repeated <= set(at_kill.ends)
    assert max(final.ends.values()) <= 2
    assert_emptied(work)


def sigkill_with_deduplication_repeats_nothing_done(
    work: WorkQueue,
    tmp_path: Path,
    count: int,
    label: str,
    lease: float,
    driver: str = "threaded",
) -> None:
    """With the Redis deduplication cache, a SIGKILLed consumer's successors run again no
    message it had marked done: at most the one caught between its handler's end and its
    mark."""
    import redis

    journal = tmp_path / "journal"
    done_ids: set[str] = set()
    with redis_keys() as prefix:

        def read_done_marks() -> None:
            client = redis.Redis(socket_timeout=5)
            done_ids.update(
                key.decode()[len(prefix) :].rsplit(".", 1)[1]
                for key in client.scan_iter(match=prefix + "*", count=1000)
                if client.get(key) == b"done"
            )
            client.close()

        config = worker_config(
            work,
            journal,
            delay=0.005,
            max_messages=10,
            redis_prefix=prefix,
            lease=lease,
            driver=driver,
        )
        at_kill = kill_then_finish(work, journal, count, config, count // 3 + 5, read_done_marks)
    final = Journal.read(journal)
    done_at_kill = {n for n, mid in at_kill.message_ids.items() if mid in done_ids}
    ended_not_done = set(at_kill.ends) - done_at_kill
    repeated = {n for n, c in final.ends.items() if c > 1}
    print(
        f"\n[{label}+redis] SIGKILL after {sum(at_kill.ends.values())} of {count} handled, "
        f"{len(done_at_kill)} marked done: {len(repeated)} processed twice, 0 lost"
    )
    assert set(final.ends) == set(range(count))
    assert not repeated & done_at_kill
    assert repeated <= ended_not_done
    assert len(ended_not_done) <= 1
    assert_emptied(work)


@dataclass
class Stopped:
    """What a SIGTERM scenario saw when the first consumer had stopped."""

    at_stop: Journal
    #: Messages left on the queue right after the first consumer exited.
    left: int


def sigterm_drains(
    work: WorkQueue,
    tmp_path: Path,
    count: int,
    label: str,
    workers: int,
    rest_timeout: float,
    count_left: bool = True,
    driver: str = "threaded",
) -> Stopped:
    """SIGTERM mid-stream: the consumer finishes the handlers in hand, settles everything and
    exits 0 within seconds; the next consumer processes the rest, nothing lost or repeated.

    With ``count_left``, the messages left on the queue are counted once the first consumer
    is gone (where counting does not consume them) and must be all it did not finish: settled
    on the way out, acknowledged or given back."""
    journal = tmp_path / "journal"
    config = worker_config(work, journal, delay=0.01, workers=workers, driver=driver)
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= 50, 60, "the consumer to progress")
        asked = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = first.wait(30)
        took = time.monotonic() - asked
        left = work.left() if count_left else -1
        at_stop = Journal.read(journal)
        second = spawn_worker(config)
        try:
            wait_for(all_done(journal, count, work), rest_timeout, "the next consumer to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {_unfinished(journal, count, work)}") from None
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    final = Journal.read(journal)
    print(
        f"\n[{label}, workers={workers}] SIGTERM: exit {code} after {took:.2f}s, "
        f"{sum(at_stop.ends.values())} of {count} done; the rest by the next consumer, "
        f"{sum(c - 1 for c in final.ends.values())} repeated"
    )
    assert code == 0
    assert took < 5
    assert first.pid in at_stop.exited
    assert at_stop.starts == at_stop.ends  # every handler in hand was finished
    assert final.ends == {n: 1 for n in range(count)}
    if count_left:
        assert left == count - sum(at_stop.ends.values())
    assert work.left() == 0
    return Stopped(at_stop, left)


# -- connections cut mid-stream ------------------------------------------------------------------


class Handled:
    """Counts handler runs per message number, thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, payload: dict[str, int]) -> None:
        time.sleep(0.002)
        with self._lock:
            self.counts[payload["n"]] += 1

    def distinct(self) -> int:
        with self._lock:
            return len(self.counts)


def cut_twice(relay: TcpRelay, handled: Handled, total: int) -> None:
    """Cut every relayed connection a third and two thirds of the way through ``total``
    messages, the second time refusing new connections for a second (an outage, not only a
    reset)."""
    wait_for(lambda: handled.distinct() >= total // 3, 60, "a third of the messages")
    assert relay.cut() > 0
    wait_for(lambda: handled.distinct() >= 2 * total // 3, 60, "two thirds of the messages")
    relay.refusing.set()
    relay.cut()
    time.sleep(1.0)
    relay.refusing.clear()


def connection_cut_loses_nothing(
    relay: TcpRelay,
    driver: str,
    backend: Callable[[], Any],
    queue: str,
    total: int,
    label: str,
    *,
    batch: int,
    repeat_bound: int,
    acknowledged: Callable[[], bool] | None = None,
) -> Handled:
    """A consumer of ``queue`` (holding ``{"n": i}`` for ``i`` in ``range(total)``) on a
    ``backend()`` that reaches the broker through ``relay``, under the ``"threaded"`` or
    ``"asyncio"`` dispatcher with 4 workers, has its connections cut twice (:func:`cut_twice`):
    every message is handled, at most ``repeat_bound`` of them twice; with ``acknowledged``,
    the test also waits for it (every message acknowledged) before stopping the consumer."""
    handled = Handled()
    kind = MessageDispatcher if driver == "threaded" else AsyncMessageDispatcher
    dispatcher = kind(
        JsonSerializer(),
        backend=backend(),
        consumers=[Consumer(handled, name="counter")],
        failure_policy=FailurePolicy.no_delay(max_attempts=5),
    )
    errors: list[BaseException] = []

    async def consume_async() -> None:
        try:
            await dispatcher.consume_loop(
                queue, concurrency=4, max_messages=batch, install_signal_handlers=False
            )
        finally:
            await dispatcher.backend.aclose()

    def run() -> None:
        try:
            if isinstance(dispatcher, AsyncMessageDispatcher):
                asyncio.run(consume_async())
            else:
                try:
                    dispatcher.consume_loop(
                        queue, workers=4, max_messages=batch, install_signal_handlers=False
                    )
                finally:
                    dispatcher.backend.close_connection()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        cut_twice(relay, handled, total)
        wait_for(lambda: handled.distinct() == total, 90, "every message")
        if acknowledged is not None:
            wait_for(acknowledged, 30, "every acknowledgement")
    finally:
        dispatcher.stop()
        thread.join(30)
    assert not errors, errors
    repeated = {n for n, c in handled.counts.items() if c > 1}
    print(
        f"\n[{label}, {driver}] two connection cuts: {total} of {total} handled, "
        f"{len(repeated)} handled twice (bound: {repeat_bound}, what was in flight)"
    )
    assert set(handled.counts) == set(range(total))
    assert len(repeated) <= repeat_bound
    return handled
