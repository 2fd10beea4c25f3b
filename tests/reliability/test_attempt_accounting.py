"""The failure policy's attempts count handler failures, whatever happens to the processes.

Stops, crashes, prefetched messages handed back and deduplication claims left behind by a
dead process must never use up an attempt: a message is dead-lettered only after its
handlers failed ``max_attempts`` times. Consumer processes (``consumer_worker.py``) journal
every handler outcome with the ``attempt`` it saw.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    Journal,
    declare_work_queue,
    delete_work_queue,
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

# Backends whose attempt count the dispatcher can keep apart from deliveries.
BACKENDS = ["sqlite", "rabbitmq"]

# The first attempt of every message fails and the second succeeds; a second attempt is the
# last one, so a single attempt used up by anything but a failure dead-letters the message.
FAIL_ONCE: dict[str, Any] = {
    "fail_first": 1,
    "policy": {"max_attempts": 2, "initial_delay": 0.2, "jitter": 0.0},
}


@pytest.fixture
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    spec = durable_spec(request.param, tmp_path, visibility_timeout=2.0)
    backend = open_backend(spec)
    declare_work_queue(backend, spec)
    yield {"spec": spec, "backend": backend}
    delete_work_queue(backend, spec)
    backend.close_connection()


def publish(backend: MessagingBackend, queue: str, count: int) -> None:
    handle = backend.get_queue(queue)
    messages = [Message.create(f'{{"n": {n}}}', "json", 1) for n in range(count)]
    for start in range(0, count, 100):
        backend.publish_batch_to_queue(messages[start : start + 100], handle)


def succeeded(journal: Path, count: int) -> bool:
    return set(Journal.read(journal).ends) >= set(range(count))


def ended(journal: Path, progress: int) -> Callable[[], bool]:
    return lambda: sum(Journal.read(journal).ends.values()) >= progress


@pytest.mark.parametrize("work", BACKENDS, indirect=True)
def test_stopping_consumers_under_load_uses_up_no_attempt(
    work: dict[str, Any], tmp_path: Path
) -> None:
    spec, backend = work["spec"], work["backend"]
    count = 400
    publish(backend, spec["queue"], count)
    journal = tmp_path / "journal"
    config = {
        "backend": spec,
        "queue": spec["queue"],
        "journal": str(journal),
        "delay": 0.005,
        "workers": 4,
        **FAIL_ONCE,
    }
    stops = 0
    process = spawn_worker(config)
    try:
        # SIGTERM the consumer twice while most messages are still queued, prefetched or
        # received: what it hands back must come back with the attempts it had.
        for progress in (60, 160):
            wait_for(ended(journal, progress), 60, f"{progress} messages to succeed")
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
            stops += 1
            process = spawn_worker(config)
        wait_for(lambda: succeeded(journal, count), 120, "every message to succeed")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        stop_process(process)
    outcomes = Journal.read(journal).outcomes
    wrong = {n: seen for n, seen in outcomes.items() if seen != [("fail", 1), ("end", 2)]}
    print(f"\n[{spec['kind']}] {stops} stops under load: {len(wrong)} messages miscounted")
    assert set(outcomes) == set(range(count))
    sample = dict(list(wrong.items())[:5])
    assert not wrong, f"{len(wrong)} not failed at attempt 1 then done at 2, e.g. {sample}"
    assert queue_depth(backend, spec["queue"] + "-dlq", spec) == 0


@pytest.mark.redis
@pytest.mark.parametrize("work", BACKENDS, indirect=True)
def test_a_claim_left_by_a_killed_process_is_no_attempt_and_expires_within_its_lease(
    work: dict[str, Any], tmp_path: Path
) -> None:
    spec, backend = work["spec"], work["backend"]
    publish(backend, spec["queue"], 1)
    journal = tmp_path / "journal"
    lease = 3.0
    with redis_keys() as prefix:
        config = {
            "backend": spec,
            "queue": spec["queue"],
            "journal": str(journal),
            "redis_prefix": prefix,
            "lease": lease,
        }
        # The first process runs the handler to its end, then dies before it can record
        # the message as done: its claim stays behind in Redis until the lease runs out.
        first = spawn_worker({**config, "crash_on": 0})
        assert first.wait(60) == -signal.SIGKILL
        killed_at = time.monotonic()
        second = spawn_worker({**config, **FAIL_ONCE})
        try:
            wait_for(
                lambda: Journal.read(journal).outcomes.get(0, [])[-1:] == [("end", 2)],
                60,
                "the message to succeed in the second process",
            )
            recovered = time.monotonic() - killed_at
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            stop_process(second)
    outcomes = Journal.read(journal).outcomes[0]
    print(f"\n[{spec['kind']}] claim of a killed process: handled again after {recovered:.1f}s")
    # The dead process's run and the hand-backs while its claim was held used up nothing:
    # the second process still had both attempts, failed the first and succeeded.
    assert outcomes == [("end", 1), ("fail", 1), ("end", 2)]
    assert queue_depth(backend, spec["queue"] + "-dlq", spec) == 0
    # Lease expiry (plus the visibility timeout on SQLite), not minutes.
    assert recovered < lease + spec["visibility_timeout"] + 10
