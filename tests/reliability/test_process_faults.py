"""Consumer processes that die or are told to stop, on durable backends shared by processes.

Every test publishes numbered messages ``{"n": i}``; consumer processes
(``consumer_worker.py``) journal each handler run, and the journal tells what ran how often.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    SHARED_BACKENDS,
    Journal,
    declare_work_queue,
    delete_work_queue,
    durable_spec,
    moto_server,
    open_backend,
    queue_depth,
    redis_keys,
    spawn_worker,
    stop_process,
    wait_for,
)

from melange.backends.interfaces import MessagingBackend
from melange.models import Message

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    """A moto SQS/SNS server shared by this module's SQS cases."""
    with moto_server() as url:
        yield url


class Broker:
    """A fresh queue holding ``count`` numbered messages on one durable backend."""

    def __init__(self, spec: dict[str, Any], count: int) -> None:
        self.spec = spec
        self.queue: str = spec["queue"]
        self.dlq = self.queue + "-dlq"
        self.backend: MessagingBackend = open_backend(spec)
        declare_work_queue(self.backend, spec)
        handle = self.backend.get_queue(self.queue)
        messages = [Message.create(json.dumps({"n": i}), "json", 1) for i in range(count)]
        for start in range(0, count, 10):
            self.backend.publish_batch_to_queue(messages[start : start + 10], handle)

    def depth(self, queue: str | None = None) -> int:
        return queue_depth(self.backend, queue or self.queue, self.spec)

    def close(self) -> None:
        delete_work_queue(self.backend, self.spec)
        self.backend.close_connection()


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Opens a :class:`Broker` on the test's backend (``kind`` parameter)."""
    made: list[Broker] = []

    def make(count: int, visibility: float = 2.0) -> Broker:
        kind = request.node.callspec.params["kind"]
        endpoint = request.getfixturevalue("sqs_endpoint") if kind == "sqs" else None
        made.append(Broker(durable_spec(kind, tmp_path, visibility, endpoint), count))
        return made[-1]

    yield make
    for item in made:
        item.close()


def scaled(kind: str, count: int) -> int:
    """Fewer messages on the SQS emulator, which handles a few dozen per second."""
    return count // 2 if kind == "sqs" else count


def completed(journal: Path) -> int:
    return sum(Journal.read(journal).ends.values())


def all_done(journal: Path, count: int, broker: Broker) -> Callable[[], bool]:
    """Every message processed; and acknowledged, where the queue's depth counts messages in
    flight (on RabbitMQ that is checked once the consumers are gone)."""

    def check() -> bool:
        if set(Journal.read(journal).ends) != set(range(count)):
            return False
        return broker.spec["kind"] == "rabbitmq" or broker.depth() == 0

    return check


@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_sigkilled_consumer_loses_nothing_and_repeats_at_most_its_batch(
    kind: str, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    count, batch = scaled(kind, 300), 10
    work = broker(count)
    journal = tmp_path / "journal"
    config = {
        "backend": work.spec,
        "queue": work.queue,
        "journal": str(journal),
        "delay": 0.005,
        "max_messages": batch,
    }
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= count // 3 + 5, 60, "the first consumer to progress")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        at_kill = Journal.read(journal)
        second = spawn_worker(config)
        wait_for(all_done(journal, count, work), 90, "every message to be processed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    final = Journal.read(journal)
    repeated = {n for n, c in final.ends.items() if c > 1}
    print(
        f"\n[{kind}] SIGKILL after {sum(at_kill.ends.values())} of {count} handled: "
        f"{len(repeated)} message(s) processed twice (bound: batch of {batch})"
    )
    assert set(final.ends) == set(range(count))
    assert len(repeated) <= batch
    # Only messages the killed process had finished can run again.
    assert repeated <= set(at_kill.ends)
    assert max(final.ends.values()) <= 2
    assert work.depth() == 0
    assert work.depth(work.dlq) == 0


@pytest.mark.redis
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_sigkilled_consumer_with_deduplication_repeats_nothing_marked_done(
    kind: str, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    import redis

    count = scaled(kind, 300)
    work = broker(count)
    journal = tmp_path / "journal"
    with redis_keys() as prefix:
        config = {
            "backend": work.spec,
            "queue": work.queue,
            "journal": str(journal),
            "delay": 0.005,
            "max_messages": 10,
            "redis_prefix": prefix,
            "lease": 2.0,
        }
        first = spawn_worker(config)
        second = None
        try:
            wait_for(lambda: completed(journal) >= count // 3 + 5, 60, "the first consumer")
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
            wait_for(all_done(journal, count, work), 90, "every message to be processed")
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
        f"\n[{kind}+redis] SIGKILL after {sum(at_kill.ends.values())} of {count} handled, "
        f"{len(done_at_kill)} marked done: {len(repeated)} processed twice"
    )
    assert set(final.ends) == set(range(count))
    assert not repeated & done_at_kill
    # At most the message caught between its handler's end and its done mark.
    assert repeated <= ended_not_done
    assert len(ended_not_done) <= 1
    assert work.depth() == 0
    assert work.depth(work.dlq) == 0


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_sigterm_stops_within_seconds_with_exit_0_and_nothing_lost_or_repeated(
    kind: str, workers: int, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    count = scaled(kind, 200)
    work = broker(count, visibility=30.0)
    journal = tmp_path / "journal"
    config = {
        "backend": work.spec,
        "queue": work.queue,
        "journal": str(journal),
        "delay": 0.01,
        "workers": workers,
    }
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= 50, 60, "the consumer to progress")
        asked = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = first.wait(30)
        took = time.monotonic() - asked
        left = work.depth()
        at_stop = Journal.read(journal)
        # Everything the first process did not finish is visible again at once: a visibility
        # timeout of 30 s would otherwise hold it past the deadline below.
        second = spawn_worker(config)
        wait_for(all_done(journal, count, work), 20, "the second consumer to process the rest")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    final = Journal.read(journal)
    print(
        f"\n[{kind}, workers={workers}] SIGTERM: exit {code} after {took:.2f}s, "
        f"{sum(at_stop.ends.values())} done, {left} left in the queue"
    )
    assert code == 0
    assert took < 5
    assert first.pid in at_stop.exited
    assert at_stop.starts == at_stop.ends  # every handler in hand was finished
    assert left == count - sum(at_stop.ends.values())  # settled: acked or given back
    assert final.ends == {n: 1 for n in range(count)}
    assert work.depth() == 0


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_a_second_signal_stops_a_consumer_stuck_in_a_handler_at_once(
    kind: str, workers: int, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    work = broker(20, visibility=30.0)
    journal = tmp_path / "journal"
    config = {
        "backend": work.spec,
        "queue": work.queue,
        "journal": str(journal),
        "block_on": 0,
        "workers": workers,
    }
    process = spawn_worker(config)
    try:
        wait_for(lambda: Journal.read(journal).starts[0] == 1, 60, "the stuck handler to start")
        process.send_signal(signal.SIGTERM)
        # The first signal waits for the handler in hand, which never returns.
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(1.0)
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
        took = time.monotonic() - asked
    finally:
        stop_process(process)
    print(f"\n[{kind}, workers={workers}] second SIGTERM: exit {code} after {took:.2f}s")
    assert code != 0
    assert took < 5
    assert Journal.read(journal).ends[0] == 0


@pytest.mark.parametrize(
    ("kind", "heartbeat"),
    # The run without heartbeat is the control: it shows the test can see a redelivery.
    [*[(k, True) for k in SHARED_BACKENDS if k != "rabbitmq"], ("sqlite", False)],
)
def test_a_handler_outlasting_the_visibility_timeout_keeps_its_message_from_other_processes(
    kind: str, heartbeat: bool, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    # RabbitMQ is left out: it has no visibility timeout (a message stays with its consumer
    # until that consumer settles it or disconnects).
    count, visibility, slow = 6, 1.0, 3.5
    work = broker(count, visibility=visibility)
    journal = tmp_path / "journal"
    config = {
        "backend": work.spec,
        "queue": work.queue,
        "journal": str(journal),
        "slow": {"0": slow},
        "max_messages": 1,
        "heartbeat": heartbeat,
    }
    consumers = [spawn_worker(config), spawn_worker(config)]
    try:
        wait_for(all_done(journal, count, work), 60, "every message to be processed")
        for process in consumers:
            process.send_signal(signal.SIGTERM)
        assert [process.wait(30) for process in consumers] == [0, 0]
    finally:
        for process in consumers:
            stop_process(process)
    final = Journal.read(journal)
    print(
        f"\n[{kind}, heartbeat={heartbeat}] handler of {slow}s, visibility timeout "
        f"{visibility}s: message 0 started {final.starts[0]} time(s)"
    )
    assert final.ends.keys() == set(range(count))
    if heartbeat:
        # Never handed to the other process while its handler ran.
        assert final.starts == {n: 1 for n in range(count)}
        assert final.ends == {n: 1 for n in range(count)}
    else:
        assert final.starts[0] >= 2
