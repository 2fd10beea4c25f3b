"""Consumer processes that die or are told to stop, on durable backends shared by processes.

Every test publishes numbered messages ``{"n": i}``; consumer processes
(``consumer_worker.py``) journal each handler run, and the journal tells what ran how often.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from reliability_support import (
    DURABLE_BACKENDS,
    Journal,
    durable_spec,
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

QUEUE = "work"


def publish_numbered(backend: MessagingBackend, count: int, queue: str = QUEUE) -> None:
    handle = backend.get_queue(queue)
    messages = [Message.create(json.dumps({"n": i}), "json", 1) for i in range(count)]
    for start in range(0, count, 100):
        backend.publish_batch_to_queue(messages[start : start + 100], handle)


def setup_queue(kind: str, tmp_path: Path, count: int, visibility: float = 2.0) -> tuple:
    spec = durable_spec(kind, tmp_path, visibility_timeout=visibility)
    backend = open_backend(spec)
    backend.declare_queue(QUEUE, dead_letter_queue_name=f"{QUEUE}-dlq")
    publish_numbered(backend, count)
    return spec, backend


def completed(journal: Path) -> int:
    return sum(Journal.read(journal).ends.values())


@pytest.mark.parametrize("kind", DURABLE_BACKENDS)
def test_sigkilled_consumer_loses_nothing_and_repeats_at_most_its_batch(
    kind: str, tmp_path: Path
) -> None:
    count, batch = 300, 10
    spec, backend = setup_queue(kind, tmp_path, count)
    journal = tmp_path / "journal"
    config = {
        "backend": spec,
        "queue": QUEUE,
        "journal": str(journal),
        "delay": 0.005,
        "max_messages": batch,
    }
    first = spawn_worker(config)
    second = None
    try:
        wait_for(lambda: completed(journal) >= count // 3, 60, "the first consumer to progress")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        at_kill = Journal.read(journal)
        second = spawn_worker(config)
        wait_for(
            lambda: (
                set(Journal.read(journal).ends) == set(range(count))
                and queue_depth(backend, QUEUE) == 0
            ),
            90,
            "every message to be processed and acknowledged",
        )
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
    assert queue_depth(backend, f"{QUEUE}-dlq") == 0


@pytest.mark.redis
@pytest.mark.parametrize("kind", DURABLE_BACKENDS)
def test_sigkilled_consumer_with_deduplication_repeats_nothing_marked_done(
    kind: str, tmp_path: Path
) -> None:
    import redis

    count = 300
    spec, backend = setup_queue(kind, tmp_path, count)
    journal = tmp_path / "journal"
    with redis_keys() as prefix:
        config = {
            "backend": spec,
            "queue": QUEUE,
            "journal": str(journal),
            "delay": 0.005,
            "max_messages": 10,
            "redis_prefix": prefix,
            "lease": 2.0,
        }
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
            wait_for(
                lambda: (
                    set(Journal.read(journal).ends) == set(range(count))
                    and queue_depth(backend, QUEUE) == 0
                ),
                90,
                "every message to be processed and acknowledged",
            )
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
    assert queue_depth(backend, f"{QUEUE}-dlq") == 0


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("kind", DURABLE_BACKENDS)
def test_sigterm_stops_within_seconds_with_exit_0_and_nothing_lost_or_repeated(
    kind: str, workers: int, tmp_path: Path
) -> None:
    count = 200
    spec, backend = setup_queue(kind, tmp_path, count, visibility=30.0)
    journal = tmp_path / "journal"
    config = {
        "backend": spec,
        "queue": QUEUE,
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
        left = queue_depth(backend, QUEUE)
        at_stop = Journal.read(journal)
        # Everything the first process did not finish is visible again at once: a visibility
        # timeout of 30 s would otherwise hold it past the deadline below.
        second = spawn_worker(config)
        wait_for(
            lambda: (
                set(Journal.read(journal).ends) == set(range(count))
                and queue_depth(backend, QUEUE) == 0
            ),
            20,
            "the second consumer to process the rest",
        )
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


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("kind", DURABLE_BACKENDS)
def test_a_second_signal_stops_a_consumer_stuck_in_a_handler_at_once(
    kind: str, workers: int, tmp_path: Path
) -> None:
    spec, _ = setup_queue(kind, tmp_path, 20, visibility=30.0)
    journal = tmp_path / "journal"
    config = {
        "backend": spec,
        "queue": QUEUE,
        "journal": str(journal),
        "block_on": 0,
        "workers": workers,
    }
    process = spawn_worker(config)
    try:
        wait_for(lambda: Journal.read(journal).starts[0] == 1, 60, "the stuck handler to start")
        process.send_signal(signal.SIGTERM)
        # The first signal waits for the handler in hand, which never returns.
        with pytest.raises(Exception, match="timed out"):
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
