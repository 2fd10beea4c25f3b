"""``melange consume``: a real process consuming until it is told to stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from cli_support import (
    assert_one_line_error,
    melange_command,
    run_melange,
    sqlite_url,
    wait_for,
)

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqlite import SQLiteBackend
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

SERVICE = textwrap.dedent(
    """
    import json
    import threading
    from melange import Consumer, InMemoryMessagingBackend, JsonSerializer, MessageDispatcher

    OUT = "consumed.jsonl"  # in the current directory
    lock = threading.Lock()

    def record(message):
        with lock, open(OUT, "a") as out:
            out.write(json.dumps(message) + "\\n")

    consumer = Consumer(record)

    def make(backend):
        return MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(record)])

    def make_consumer():
        return Consumer(record)

    async def record_async(message):
        record(message)

    def make_async(backend):
        from melange.aio import AsyncMessageDispatcher

        return AsyncMessageDispatcher(
            JsonSerializer(), backend=backend, consumers=[Consumer(record_async)]
        )

    async_consumer = Consumer(record_async)

    ready_made = MessageDispatcher(
        JsonSerializer(), backend=InMemoryMessagingBackend(), consumers=[consumer]
    )

    not_a_consumer = 42
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "service.py").write_text(SERVICE)
    backend = SQLiteBackend(tmp_path / "broker.db")
    MessagingBackendFactory(backend).init_queue("jobs")
    publisher = QueuePublisher(JsonSerializer(), backend)
    for n in range(5):
        publisher.publish("jobs", {"job": n})
    backend.close_connection()
    return tmp_path


def consumed(workdir: Path) -> list[object]:
    path = workdir / "consumed.jsonl"
    if not path.exists():
        return []
    # A line still being written has no newline yet: it is read on the next poll.
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


@pytest.mark.parametrize(
    ("target", "workers", "stop_signal"),
    [
        ("service:make", "1", signal.SIGTERM),
        ("service:consumer", "3", signal.SIGTERM),
        ("service:make_consumer", "1", signal.SIGINT),
        # An asyncio dispatcher, and a consumer with an async handler, run on an event loop.
        ("service:make_async", "2", signal.SIGTERM),
        ("service:async_consumer", "1", signal.SIGINT),
    ],
)
def test_consumes_until_signalled_then_exits_cleanly_with_its_counts(
    workdir: Path, target: str, workers: str, stop_signal: signal.Signals
) -> None:
    process = subprocess.Popen(
        melange_command(
            "consume",
            target,
            "--queue",
            "jobs",
            "--workers",
            workers,
            "--backend-url",
            sqlite_url(workdir / "broker.db"),
        ),
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if k != "MELANGE_BACKEND_URL"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(consumed(workdir)) == 5)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()  # reaps it and closes its pipes (no leak into later tests)

    assert process.returncode == 0, stderr
    assert sorted(m["job"] for m in consumed(workdir)) == [0, 1, 2, 3, 4]  # type: ignore[index]
    assert f"with {workers} worker(s)" in stderr
    assert "stopped: received 5, acknowledged 5" in stderr
    assert SQLiteBackend(workdir / "broker.db").queue_depth("jobs") == 0


def test_module_that_does_not_import_names_the_module_and_where_it_looked(
    workdir: Path,
) -> None:
    result = run_melange("consume", "servce:make", "--queue", "jobs", cwd=workdir)
    assert_one_line_error(result, "cannot import module 'servce'", str(workdir))


def test_module_whose_own_import_fails_is_told_apart_from_a_missing_module(
    workdir: Path,
) -> None:
    (workdir / "needs_lib.py").write_text("import lib_that_is_not_installed\n")
    result = run_melange("consume", "needs_lib:make", "--queue", "jobs", cwd=workdir)
    assert_one_line_error(
        result, "importing module 'needs_lib' failed", "'lib_that_is_not_installed'"
    )


def test_missing_attribute_names_the_module_file(workdir: Path) -> None:
    result = run_melange("consume", "service:maker", "--queue", "jobs", cwd=workdir)
    assert_one_line_error(result, "has no attribute 'maker'", "service.py")


def test_target_must_be_module_colon_attribute(workdir: Path) -> None:
    result = run_melange("consume", "service.make", "--queue", "jobs", cwd=workdir)
    assert_one_line_error(result, "not of the form module:attribute")


def test_attribute_that_is_not_a_consumer_is_refused(workdir: Path) -> None:
    result = run_melange(
        "consume",
        "service:not_a_consumer",
        "--queue",
        "jobs",
        cwd=workdir,
    )
    assert_one_line_error(result, "is a int, not a MessageDispatcher")


def test_ready_made_dispatcher_cannot_take_another_backend(workdir: Path) -> None:
    result = run_melange(
        "consume",
        "service:ready_made",
        "--queue",
        "jobs",
        "--backend-url",
        "memory://",
        cwd=workdir,
    )
    assert_one_line_error(result, "already bound to", "factory function")


def test_missing_queue_is_a_one_line_error(workdir: Path) -> None:
    result = run_melange(
        "consume",
        "service:make",
        "--queue",
        "nope",
        "--backend-url",
        sqlite_url(workdir / "broker.db"),
        cwd=workdir,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: queue 'nope' does not exist")
