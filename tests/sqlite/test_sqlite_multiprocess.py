"""Several processes share one SQLite file: each message is handled once, and a consumer
killed mid-way loses nothing (its unsettled messages come back when their lease expires)."""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from melange.backends.sqlite import SQLiteBackend
from melange.models import Message
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

SCRIPT = Path(__file__).with_name("consumer_process.py")
TIMEOUT = 60.0
#: Messages a dispatcher receives at once: the most a killed consumer can hold unsettled.
BATCH = 10


def read_log(path: Path) -> list[int]:
    """The numbers a consumer logged (a last line cut short by a kill is not counted)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [int(line) for line in text.split("\n")[:-1]]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def start_consumer(
    started: list[subprocess.Popen[bytes]], db: Path, queue: str, log: Path, work: float
) -> subprocess.Popen[bytes]:
    with log.with_suffix(".err").open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(db), queue, str(log), str(work)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    started.append(process)
    return process


def stop_gracefully(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM a consumer and check it stopped cleanly."""
    marker = log.with_suffix(".ready")
    wait_for(marker.exists, f"{marker.name} (the consumer handling SIGTERM)")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    assert process.returncode == 0, log.with_suffix(".err").read_text()


def test_killed_consumer_process_loses_no_message(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "shared.db"
    total = 3000
    backend = SQLiteBackend(db)
    backend.declare_queue("work", visibility_timeout=2)
    publisher = QueuePublisher(JsonSerializer(), backend)
    for start in range(0, total, 500):
        publisher.publish_batch("work", [{"n": n} for n in range(start, start + 500)])
    assert backend.queue_stats("work").ready == total

    # The victim starts alone and is killed only once every survivor is consuming too.
    victim_log = tmp_path / "victim.log"
    victim = start_consumer(processes, db, "work", victim_log, 0.002)
    wait_for(lambda: len(read_log(victim_log)) >= 100, "the first consumer to get going")
    survivor_logs = [tmp_path / f"survivor-{i}.log" for i in range(3)]
    survivors = [start_consumer(processes, db, "work", log, 0.002) for log in survivor_logs]
    wait_for(lambda: all(read_log(log) for log in survivor_logs), "every consumer to consume")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    killed_at = len(read_log(victim_log))
    assert killed_at < total, "the victim finished before it could be killed mid-way"

    def everything_handled() -> bool:
        handled = set(read_log(victim_log))
        for log in survivor_logs:
            handled.update(read_log(log))
        return len(handled) == total and backend.queue_stats("work").total == 0

    wait_for(everything_handled, "every message to be handled and acknowledged")
    for process, log in zip(survivors, survivor_logs, strict=True):
        stop_gracefully(process, log)

    from_victim = collections.Counter(read_log(victim_log))
    from_survivors = collections.Counter(n for log in survivor_logs for n in read_log(log))
    assert set(from_victim) | set(from_survivors) == set(range(total))
    # Only messages the victim held unsettled when it died may be handled twice.
    assert max(from_victim.values()) == 1
    assert max(from_survivors.values()) == 1
    twice = set(from_victim) & set(from_survivors)
    assert len(twice) <= BATCH, f"{len(twice)} messages handled twice: {sorted(twice)}"
    assert backend.queue_stats("work").total == 0
    backend.close_connection()


def test_concurrent_publisher_and_consumer_processes_hand_over_every_message(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "shared.db"
    backend = SQLiteBackend(db)
    backend.declare_queue("live")
    logs = [tmp_path / f"consumer-{i}.log" for i in range(2)]
    consumers = [start_consumer(processes, db, "live", log, 0.0) for log in logs]
    # Published while the consumers poll: they see another process's messages.
    publisher_code = (
        "import sys\n"
        "from melange.backends.sqlite import SQLiteBackend\n"
        "from melange.publishers import QueuePublisher\n"
        "from melange.serializers.json import JsonSerializer\n"
        "backend = SQLiteBackend(sys.argv[1])\n"
        "publisher = QueuePublisher(JsonSerializer(), backend)\n"
        "for n in range(int(sys.argv[2]), int(sys.argv[3])):\n"
        "    publisher.publish('live', {'n': n})\n"
    )
    publishers = [
        subprocess.run(
            [sys.executable, "-c", publisher_code, str(db), str(lo), str(lo + 500)],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        for lo in (0, 500)
    ]
    for result in publishers:
        assert result.returncode == 0, result.stderr.decode()

    def everything_handled() -> bool:
        handled = [n for log in logs for n in read_log(log)]
        return len(set(handled)) == 1000 and backend.queue_stats("live").total == 0

    wait_for(everything_handled, "every message to be handled and acknowledged")
    for process, log in zip(consumers, logs, strict=True):
        stop_gracefully(process, log)
    handled = collections.Counter(n for log in logs for n in read_log(log))
    assert sorted(handled) == list(range(1000))
    assert max(handled.values()) == 1
    backend.close_connection()
    assert os.path.getsize(db) > 0


def test_processes_opening_a_new_file_together_create_it_once(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    code = (
        "import sys\n"
        "from melange.backends.sqlite import SQLiteBackend\n"
        "from melange.testing.conformance import make_message\n"
        "backend = SQLiteBackend(sys.argv[1])\n"
        "queue, _ = backend.declare_queue(sys.argv[2])\n"
        "backend.publish_to_queue(make_message('1'), queue)\n"
        "backend.close_connection()\n"
    )
    names = [f"q{i}" for i in range(4)]
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(db), name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for process in starters:
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err.decode()
    backend = SQLiteBackend(db)
    assert backend.queue_names() == names
    assert [backend.queue_depth(name) for name in names] == [1, 1, 1, 1]
    backend.close_connection()


def _use_inherited_backend(backend: SQLiteBackend) -> None:
    queue = backend.get_queue("inherited")
    got = backend.retrieve_messages(queue, max_messages=100)
    backend.acknowledge_batch(got)
    backend.publish_batch_to_queue(
        [Message.create(f"child-{m.content}", "json", 1) for m in got], queue
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_use_the_backend_it_inherited(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path / "fork.db")
    queue, _ = backend.declare_queue("inherited")
    backend.publish_batch_to_queue([Message.create(str(i), "json", 1) for i in range(10)], queue)
    child = multiprocessing.get_context("fork").Process(
        target=_use_inherited_backend, args=(backend,)
    )
    child.start()
    child.join(timeout=TIMEOUT)
    assert child.exitcode == 0
    # The parent's own connections still work after the child used and left the file.
    assert sorted(m.content for m in backend.peek("inherited", limit=100)) == sorted(
        f"child-{i}" for i in range(10)
    )
    backend.close_connection()
