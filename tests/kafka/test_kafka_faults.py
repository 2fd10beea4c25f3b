"""Faults on Kafka: consumer processes killed, stopped, joining and leaving the group, and the
broker connection cut, mid-stream; nothing may be lost.

Every test publishes numbered messages ``{"n": i}`` to a queue of two partitions. Consumer
processes (``tests/reliability/consumer_worker.py`` on the ``kafka`` kind of
``reliability_support``) journal each handler run, and the journal tells what ran how often.
Repeats are allowed only where the process that ran a message first died or gave its
partition away before the commit reached the broker: at most the messages in flight.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

from reliability_support import (
    Journal,
    declare_work_queue,
    delete_work_queue,
    drain,
    durable_spec,
    open_backend,
    redis_keys,
    spawn_worker,
    stop_process,
    wait_for,
)
from tansu_broker import TEST_OPTIONS, free_port, start_tansu

from melange import Consumer, FailurePolicy, JsonSerializer, MessageDispatcher
from melange.backends.interfaces import MessagingBackend
from melange.backends.kafka import KafkaBackend
from melange.models import Message

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: Messages a consumer process receives at once (its in-flight bound).
BATCH = 10


class WorkQueue:
    """A fresh queue (and dead-letter queue) on the test broker holding ``count`` messages."""

    def __init__(self, url: str, tmp_path: Path, count: int) -> None:
        self.spec = durable_spec("kafka", tmp_path, 0, kafka={"url": url, **TEST_OPTIONS})
        self.queue: str = self.spec["queue"]
        self.backend: MessagingBackend = open_backend(self.spec)
        declare_work_queue(self.backend, self.spec)
        handle = self.backend.get_queue(self.queue)
        messages = [Message.create(json.dumps({"n": i}), "json", 1) for i in range(count)]
        for start in range(0, count, 10):
            self.backend.publish_batch_to_queue(messages[start : start + 10], handle)

    def left(self, queue: str | None = None) -> int:
        """Messages still to be received from ``queue`` (received and acknowledged here).

        Not the group's lag: tansu reports a partition's end after a batch of records as the
        batch's first offset + 1, so the lag undercounts.
        """
        return len(drain(self.backend, queue or self.queue))

    def close(self) -> None:
        # Every consumer process is gone by now: tansu must not delete a topic being read.
        delete_work_queue(self.backend, self.spec)
        self.backend.close_connection()


@pytest.fixture
def work_queue(kafka_url: str, tmp_path: Path) -> Iterator[Callable[[int], WorkQueue]]:
    made: list[WorkQueue] = []

    def make(count: int) -> WorkQueue:
        made.append(WorkQueue(kafka_url, tmp_path, count))
        return made[-1]

    yield make
    for item in made:
        item.close()


def worker_config(work: WorkQueue, journal: Path, **extra: Any) -> dict[str, Any]:
    config = {
        "backend": work.spec,
        "queue": work.queue,
        "journal": str(journal),
        "delay": 0.005,
        "max_messages": BATCH,
    }
    config.update(extra)
    return config


def completed(journal: Path) -> int:
    return sum(Journal.read(journal).ends.values())


def all_ended(journal: Path, count: int) -> Callable[[], bool]:
    return lambda: set(Journal.read(journal).ends) == set(range(count))


def ends_by_process(journal: Path) -> collections.Counter[int]:
    """How many handlers each process (by pid) finished."""
    counts: collections.Counter[int] = collections.Counter()
    for line in journal.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "end":
            counts[int(parts[3])] += 1
    return counts


def test_a_sigkilled_consumer_loses_nothing_and_repeats_at_most_its_batch(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path
) -> None:
    count = 200
    work = work_queue(count)
    journal = tmp_path / "journal"
    config = worker_config(work, journal)
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= count // 3, 60, "the first consumer to progress")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        at_kill = Journal.read(journal)
        # The group gives the dead consumer's partitions away once its session expires.
        second = spawn_worker(config)
        wait_for(all_ended(journal, count), 90, "every message to be processed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    final = Journal.read(journal)
    repeated = {n for n, c in final.ends.items() if c > 1}
    print(
        f"\n[kafka] SIGKILL after {sum(at_kill.ends.values())} of {count} handled: "
        f"{len(repeated)} processed twice (bound: batch of {BATCH}), 0 lost"
    )
    assert set(final.ends) == set(range(count))
    assert repeated <= set(at_kill.ends), "only what the killed process ran may run again"
    assert len(repeated) <= BATCH
    assert max(final.ends.values()) <= 2
    assert work.left() == 0
    assert work.left(work.queue + "-dlq") == 0


@pytest.mark.redis
def test_a_sigkilled_consumer_with_deduplication_repeats_nothing_marked_done(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path
) -> None:
    import redis

    count = 200
    work = work_queue(count)
    journal = tmp_path / "journal"
    with redis_keys() as prefix:
        config = worker_config(work, journal, redis_prefix=prefix, lease=5.0)
        first = spawn_worker(config)
        second = None
        try:
            wait_for(lambda: completed(journal) >= count // 3, 60, "the first consumer")
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            at_kill = Journal.read(journal)
            client = redis.Redis(socket_timeout=5)
            done_ids = {
                key.decode()[len(prefix) :].rsplit(".", 1)[1]
                for key in client.scan_iter(match=prefix + "*", count=1000)
                if client.get(key) == b"done"
            }
            client.close()
            second = spawn_worker(config)
            wait_for(all_ended(journal, count), 90, "every message to be processed")
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            stop_process(first)
            if second is not None:
                stop_process(second)
    final = Journal.read(journal)
    done_at_kill = {n for n, mid in at_kill.message_ids.items() if mid in done_ids}
    ended_not_done = set(at_kill.ends) - done_at_kill
    repeated = {n for n, c in final.ends.items() if c > 1}
    print(
        f"\n[kafka+redis] SIGKILL after {sum(at_kill.ends.values())} of {count} handled, "
        f"{len(done_at_kill)} marked done: {len(repeated)} processed twice, 0 lost"
    )
    assert set(final.ends) == set(range(count))
    assert not repeated & done_at_kill
    # At most the message caught between its handler's end and its done mark.
    assert repeated <= ended_not_done
    assert len(ended_not_done) <= 1
    assert work.left() == 0


@pytest.mark.parametrize("workers", [1, 4])
def test_sigterm_drains_with_exit_0_and_nothing_lost_or_repeated(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path, workers: int
) -> None:
    count = 200
    work = work_queue(count)
    journal = tmp_path / "journal"
    config = worker_config(work, journal, delay=0.01, workers=workers)
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= 50, 60, "the consumer to progress")
        asked = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = first.wait(30)
        took = time.monotonic() - asked
        at_stop = Journal.read(journal)
        second = spawn_worker(config)
        wait_for(all_ended(journal, count), 60, "the second consumer to process the rest")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    final = Journal.read(journal)
    print(
        f"\n[kafka, workers={workers}] SIGTERM: exit {code} after {took:.2f}s, "
        f"{sum(at_stop.ends.values())} of {count} done; the rest by the next consumer, "
        f"{sum(c - 1 for c in final.ends.values())} repeated"
    )
    assert code == 0
    assert took < 5
    assert first.pid in at_stop.exited
    assert at_stop.starts == at_stop.ends  # every handler in hand was finished
    assert final.ends == {n: 1 for n in range(count)}
    assert work.left() == 0


def test_a_consumer_joining_then_leaving_the_group_mid_stream_loses_nothing(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path
) -> None:
    count = 400
    work = work_queue(count)
    journal = tmp_path / "journal"
    config = worker_config(work, journal, delay=0.01)
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= 40, 60, "the first consumer to progress")
        joined = time.monotonic()
        second = spawn_worker(config)  # joins: the group hands it one of the two partitions
        wait_for(
            lambda: ends_by_process(journal)[second.pid] >= 20, 120, "the second one to take part"
        )
        joined = time.monotonic() - joined
        at_leave = completed(journal)
        second.send_signal(signal.SIGTERM)  # leaves: its partition moves back
        assert second.wait(30) == 0
        wait_for(all_ended(journal, count), 90, "every message to be processed")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    final = Journal.read(journal)
    repeated = {n for n, c in final.ends.items() if c > 1}
    shares = ends_by_process(journal)
    print(
        f"\n[kafka] join then leave mid-stream (the joining process handled 20 messages "
        f"{joined:.1f}s after it started; {at_leave} of {count} done at the leave; "
        f"per process {dict(shares)}): {len(repeated)} processed twice, 0 lost"
    )
    assert set(final.ends) == set(range(count))
    # Each rebalance waits for the messages handed out from a moving partition to be settled,
    # then commits: what it repeats is at most what was still in flight.
    assert len(repeated) <= BATCH
    assert work.left() == 0


# -- the broker connection cut ----------------------------------------------------------------


def _tcp_proxy_class() -> Any:
    """``TcpProxy`` of ``tests/rabbitmq/conftest.py`` (a conftest is not importable by name):
    a relay whose ``cut()`` resets every connection and which, while ``refusing`` is set,
    drops new ones at once without giving its port up (a port given up can be taken by a
    client's own connection attempt to it, from the same ephemeral range)."""
    path = Path(__file__).resolve().parent.parent / "rabbitmq" / "conftest.py"
    spec = importlib.util.spec_from_file_location("melange_tests_rabbitmq_fixtures_kafka", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.TcpProxy


@pytest.fixture
def relayed_kafka(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A tansu broker of the test's own, reached only through a TCP relay the test can cut:
    the broker advertises the relay's port, so every connection goes through it."""
    port = free_port()
    relay = _tcp_proxy_class()(("127.0.0.1", port))
    try:
        with start_tansu(tmp_path / "tansu.log", port=port, advertised_port=relay.port):
            yield f"kafka://127.0.0.1:{relay.port}", relay
    finally:
        relay.close()


def test_the_broker_connection_cut_mid_stream_loses_nothing(
    relayed_kafka: tuple[str, Any],
) -> None:
    url, relay = relayed_kafka
    count = 300
    publisher = KafkaBackend(url, **TEST_OPTIONS)  # type: ignore[arg-type]
    consumer = KafkaBackend(url, **TEST_OPTIONS)  # type: ignore[arg-type]
    handled: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def handle(payload: dict[str, int]) -> None:
        with lock:
            handled[payload["n"]] += 1
        time.sleep(0.005)

    queue_name = "cut-work"
    publisher.declare_queue(queue_name, dead_letter_queue_name="cut-work-dlq")
    queue = publisher.get_queue(queue_name)
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=consumer,
        consumers=[Consumer(handle, name="cut")],
        failure_policy=FailurePolicy.no_delay(max_attempts=None),
    )
    loop = threading.Thread(
        target=dispatcher.consume_loop,
        args=(queue_name,),
        kwargs={"install_signal_handlers": False, "max_messages": BATCH},
        daemon=True,
    )
    loop.start()
    cuts: list[str] = []
    try:
        for start in range(0, count, 10):
            batch = [
                Message.create(json.dumps({"n": n}), "json", 1) for n in range(start, start + 10)
            ]
            publisher.publish_batch_to_queue(batch, queue)
            if start == 100:
                cuts.append(f"reset of {relay.cut()} sockets")
            elif start == 200:
                relay.refusing.set()  # an outage: every connection reset, new ones dropped
                cuts.append(f"3 s outage ({relay.cut()} sockets reset)")
                time.sleep(3.0)
                relay.refusing.clear()
            time.sleep(0.02)
        wait_for(lambda: set(handled) == set(range(count)), 90, "every message to be handled")
    finally:
        dispatcher.stop()
        loop.join(30)
        dispatcher.close()
        consumer.close_connection()
    left = drain(publisher, queue_name)
    publisher.close_connection()
    repeated = {n for n, c in handled.items() if c > 1}
    print(
        f"\n[kafka] connection cut mid-stream ({', '.join(cuts)}): {count} published, "
        f"{len(handled)} handled, {len(repeated)} twice, 0 lost"
    )
    assert not loop.is_alive()
    assert set(handled) == set(range(count))
    assert left == []
    # A cut can take the group's partitions away from the consumer: what it had in flight
    # is delivered again, nothing more.
    assert len(repeated) <= 2 * BATCH
