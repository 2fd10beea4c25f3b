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
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

from fault_scenarios import (
    all_done,
    completed,
    sigkill_loses_nothing,
    sigkill_with_deduplication_repeats_nothing_done,
    sigterm_drains,
    worker_config,
)
from reliability_support import (
    Journal,
    declare_work_queue,
    delete_work_queue,
    drain,
    durable_spec,
    open_backend,
    spawn_worker,
    stop_process,
    wait_for,
)
from tansu_broker import TEST_OPTIONS, free_port, start_tansu

from melange import Consumer, FailurePolicy, JsonSerializer, MessageDispatcher
from melange.backends.interfaces import MessagingBackend
from melange.backends.kafka import KafkaBackend
from melange.models import Message
from tcp_relay import TcpRelay

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: Messages a consumer process receives at once (its in-flight bound).
BATCH = 10


class WorkQueue:
    """A fresh queue (and dead-letter queue) on the test broker holding ``count`` messages."""

    def __init__(self, url: str, tmp_path: Path, count: int) -> None:
        self.spec = durable_spec("kafka", tmp_path, 0, kafka={"url": url, **TEST_OPTIONS})
        self.queue: str = self.spec["queue"]
        self.dlq = self.queue + "-dlq"
        # A Kafka queue's lag cannot tell a message handed out from one acknowledged.
        self.counts_in_flight = False
        self.backend: MessagingBackend = open_backend(self.spec)
        declare_work_queue(self.backend, self.spec)
        self.published = 0
        self.publish(count)

    def publish(self, count: int) -> None:
        """Publish the next ``count`` numbered messages, ten to a batch."""
        handle = self.backend.get_queue(self.queue)
        first, self.published = self.published, self.published + count
        messages = [
            Message.create(json.dumps({"n": i}), "json", 1) for i in range(first, first + count)
        ]
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
        try:
            delete_work_queue(self.backend, self.spec)
        finally:
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
    # The group gives the dead consumer's partitions away once its session expires.
    sigkill_loses_nothing(work_queue(200), tmp_path, 200, "kafka", batch=BATCH)


@pytest.mark.redis
def test_a_sigkilled_consumer_with_deduplication_repeats_nothing_marked_done(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path
) -> None:
    sigkill_with_deduplication_repeats_nothing_done(
        work_queue(200), tmp_path, 200, "kafka", lease=5.0
    )


@pytest.mark.parametrize("workers", [1, 4])
def test_sigterm_drains_with_exit_0_and_nothing_lost_or_repeated(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path, workers: int
) -> None:
    # What is left is counted by receiving it, so only at the end, with every consumer gone.
    sigterm_drains(
        work_queue(200), tmp_path, 200, "kafka", workers, rest_timeout=60, count_left=False
    )


def test_a_consumer_joining_then_leaving_the_group_mid_stream_loses_nothing(
    work_queue: Callable[[int], WorkQueue], tmp_path: Path
) -> None:
    work = work_queue(100)
    journal = tmp_path / "journal"
    config = worker_config(work, journal, delay=0.01, max_messages=BATCH)
    first = spawn_worker(config)
    second = None
    feeding = threading.Event()
    try:
        wait_for(lambda: completed(journal) >= 40, 60, "the first consumer to progress")
        joined = time.monotonic()
        second = spawn_worker(config)  # joins: the group hands it one of the two partitions
        joiner = second.pid

        # Keep the queue fed until the joining process has taken part: on a loaded machine
        # its start and the rebalance can outlast what the first one had left to do.
        def feed() -> None:
            while not feeding.is_set() and work.published < 5_000:
                work.publish(10)
                time.sleep(0.05)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            wait_for(lambda: ends_by_process(journal)[joiner] >= 20, 120, "the second to take part")
        finally:
            feeding.set()
            feeder.join()
        joined = time.monotonic() - joined
        work.publish(100)  # work left for both to hand over at the leave
        count = work.published
        at_leave = completed(journal)
        second.send_signal(signal.SIGTERM)  # leaves: its partition moves back
        assert second.wait(30) == 0
        wait_for(all_done(journal, count, work), 90, "every message to be processed")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        feeding.set()
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


@pytest.fixture
def relayed_kafka(tmp_path: Path) -> Iterator[tuple[str, TcpRelay]]:
    """A tansu broker of the test's own, reached only through a TCP relay the test can cut:
    the broker advertises the relay's port, so every connection goes through it."""
    port = free_port()
    relay = TcpRelay(("127.0.0.1", port))
    try:
        with start_tansu(tmp_path / "tansu.log", port=port, advertised_port=relay.port):
            yield f"kafka://127.0.0.1:{relay.port}", relay
    finally:
        relay.close()


def test_the_broker_connection_cut_mid_stream_loses_nothing(
    relayed_kafka: tuple[str, TcpRelay],
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
