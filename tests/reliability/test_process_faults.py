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
from fault_scenarios import (
    all_done,
    sigkill_loses_nothing,
    sigkill_with_deduplication_repeats_nothing_done,
    sigterm_drains,
)
from reliability_support import (
    SHARED_BACKENDS,
    Journal,
    declare_work_queue,
    delete_work_queue,
    durable_spec,
    moto_server,
    open_backend,
    queue_depth,
    spawn_worker,
    stop_process,
    wait_for,
)

from melange.backends.interfaces import MessagingBackend
from melange.models import Message

pytestmark = pytest.mark.slow

#: The dispatchers the consumer processes run: the threaded one, and the asyncio one on the
#: backend's asyncio twin.
DRIVERS = ["threaded", "asyncio"]
#: Dispatcher and workers (the asyncio dispatcher's concurrency) of the SIGTERM cases: the
#: asyncio dispatcher with several tasks, the case where it has the most to give back.
DRIVER_WORKERS = [("threaded", 1), ("threaded", 4), ("asyncio", 4)]


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
        # RabbitMQ's queue depth leaves out the messages its consumers hold unacknowledged.
        self.counts_in_flight = spec["kind"] != "rabbitmq"
        self.backend: MessagingBackend = open_backend(spec)
        declare_work_queue(self.backend, spec)
        handle = self.backend.get_queue(self.queue)
        messages = [Message.create(json.dumps({"n": i}), "json", 1) for i in range(count)]
        for start in range(0, count, 10):
            self.backend.publish_batch_to_queue(messages[start : start + 10], handle)

    def left(self, queue: str | None = None) -> int:
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


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_sigkilled_consumer_loses_nothing_and_repeats_at_most_its_batch(
    kind: str, driver: str, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    count = scaled(kind, 300)
    sigkill_loses_nothing(broker(count), tmp_path, count, f"{kind}, {driver}", driver=driver)


@pytest.mark.redis
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_sigkilled_consumer_with_deduplication_repeats_nothing_marked_done(
    kind: str, driver: str, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    count = scaled(kind, 300)
    sigkill_with_deduplication_repeats_nothing_done(
        broker(count), tmp_path, count, f"{kind}, {driver}", lease=2.0, driver=driver
    )


@pytest.mark.parametrize(("driver", "workers"), DRIVER_WORKERS)
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_sigterm_stops_within_seconds_with_exit_0_and_nothing_lost_or_repeated(
    kind: str, driver: str, workers: int, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    count = scaled(kind, 200)
    # A visibility timeout of 30 s: what the first process did not finish must be visible
    # again at once because it gave it back, not because its lease ran out.
    work = broker(count, visibility=30.0)
    sigterm_drains(work, tmp_path, count, f"{kind}, {driver}", workers, 20, driver=driver)


@pytest.mark.parametrize(("driver", "workers"), DRIVER_WORKERS)
@pytest.mark.parametrize("kind", SHARED_BACKENDS)
def test_a_second_signal_stops_a_consumer_stuck_in_a_handler_at_once(
    kind: str, driver: str, workers: int, broker: Callable[..., Broker], tmp_path: Path
) -> None:
    work = broker(20, visibility=30.0)
    journal = tmp_path / "journal"
    config = {
        "backend": work.spec,
        "queue": work.queue,
        "journal": str(journal),
        "block_on": 0,
        "workers": workers,
        "driver": driver,
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
    print(f"\n[{kind}, {driver}, workers={workers}] second SIGTERM: exit {code} after {took:.2f}s")
    assert code != 0
    assert took < 5
    assert Journal.read(journal).ends[0] == 0


def _redelivered(journal: Path, count: int) -> Callable[[], bool]:
    """Message 0 started twice, and every other message was processed."""

    def check() -> bool:
        final = Journal.read(journal)
        return final.starts.get(0, 0) >= 2 and set(range(1, count)) <= set(final.ends)

    return check


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
    if heartbeat:
        done, what = all_done(journal, count, work), "every message to be processed"
    else:
        # The control has seen what it shows once message 0 started twice: the rest would
        # only wait for the redrive limit to dead-letter it. Stopping drains the handlers.
        done, what = _redelivered(journal, count), "message 0 to be handed out again"
    try:
        wait_for(done, 60, what)
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
