"""Calls of the SQLite backend tried on an event loop first (``run_inline``): they run on the
loop's thread when no other connection writes, and otherwise go to a worker thread having
done nothing, so that the loop never waits for another connection's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from melange.backends.async_interfaces import as_async
from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.exceptions import BackendError, WouldBlock
from melange.models import QueueWrapper
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import make_message


class ThreadRecordingBackend(SQLiteBackend):
    """Records the thread each publish and acknowledgement ran on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[tuple[str, int]] = []

    def publish_to_queue(self, message: Any, queue: QueueWrapper, **kwargs: Any) -> None:
        self.threads.append(("publish", threading.get_ident()))
        super().publish_to_queue(message, queue, **kwargs)

    def acknowledge_batch(self, messages: Any) -> None:
        self.threads.append(("acknowledge", threading.get_ident()))
        super().acknowledge_batch(messages)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ThreadRecordingBackend]:
    backend = ThreadRecordingBackend(tmp_path / "melange.db", busy_timeout=10)
    yield backend
    backend.close_connection()


@pytest.fixture
def locker(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection to the same file, to hold its write lock."""
    conn = sqlite3.connect(tmp_path / "melange.db", isolation_level=None, timeout=10)
    yield conn
    conn.close()


def test_a_call_that_would_wait_for_the_write_lock_does_nothing(
    backend: ThreadRecordingBackend, locker: sqlite3.Connection
) -> None:
    queue, _ = backend.declare_queue("jobs")
    locker.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(WouldBlock, match="locked"):
        backend.run_inline(backend.publish_to_queue, make_message('"held"'), queue)
    # Refused at once, not after busy_timeout (10 s).
    assert time.monotonic() - started < 1
    locker.execute("ROLLBACK")
    assert backend.queue_stats("jobs").total == 0
    # The same call, made the ordinary way, then publishes.
    backend.publish_to_queue(make_message('"held"'), queue)
    assert [m.content for m in backend.retrieve_messages(queue)] == ['"held"']


def test_a_lock_met_after_a_commit_is_an_error_not_a_call_to_make_again(
    backend: ThreadRecordingBackend, locker: sqlite3.Connection
) -> None:
    # Making the whole call again on a thread would publish the first message twice.
    queue, _ = backend.declare_queue("jobs")

    def two_writes() -> None:
        backend.publish_to_queue(make_message('"first"'), queue)
        locker.execute("BEGIN IMMEDIATE")
        backend.publish_to_queue(make_message('"second"'), queue)

    with pytest.raises(BackendError) as raised:
        backend.run_inline(two_writes)
    assert not isinstance(raised.value, WouldBlock)
    locker.execute("ROLLBACK")
    assert [m.content for m in backend.retrieve_messages(queue)] == ['"first"']


def test_an_in_memory_database_in_use_by_another_thread_would_block() -> None:
    backend = SQLiteBackend(":memory:")
    try:
        queue, _ = backend.declare_queue("jobs")
        conn = backend._db.acquire()  # what another thread's call holds meanwhile
        try:
            with pytest.raises(WouldBlock, match="in use"):
                backend.run_inline(backend.publish_to_queue, make_message('"x"'), queue)
        finally:
            backend._db.release(conn)
        backend.run_inline(backend.publish_to_queue, make_message('"x"'), queue)
        assert backend.queue_stats("jobs").total == 1
    finally:
        backend.close_connection()


def test_the_asyncio_adapter_calls_on_the_loop_and_goes_to_a_thread_only_when_locked(
    backend: ThreadRecordingBackend, locker: sqlite3.Connection
) -> None:
    queue, _ = backend.declare_queue("jobs")
    adapted = as_async(backend)

    async def scenario() -> int:
        loop_thread = threading.get_ident()
        await adapted.publish_to_queue(make_message('"free"'), queue)
        locker.execute("BEGIN IMMEDIATE")
        # Released while the publish waits on its worker thread.
        asyncio.get_running_loop().call_later(0.3, locker.execute, "ROLLBACK")
        await adapted.publish_to_queue(make_message('"locked"'), queue)
        return loop_thread

    loop_thread = asyncio.run(scenario())
    publishes = [thread for call, thread in backend.threads if call == "publish"]
    # The first on the loop; the second tried there, then made again on a worker thread.
    assert publishes[0] == loop_thread
    assert publishes[1] == loop_thread
    assert publishes[2] != loop_thread
    assert len(publishes) == 3
    assert sorted(m.content for m in backend.retrieve_messages(queue)) == ['"free"', '"locked"']


def test_synchronous_full_keeps_every_call_off_the_loop(tmp_path: Path) -> None:
    # Each commit waits for the disk there: not something to do on an event loop.
    backend = SQLiteBackend(tmp_path / "full.db", synchronous="FULL")
    try:
        assert not backend.inline_when_free
    finally:
        backend.close_connection()
    assert SQLiteBackend(tmp_path / "normal.db").inline_when_free


def test_the_asyncio_dispatcher_settles_on_the_loop(backend: ThreadRecordingBackend) -> None:
    queue, _ = backend.declare_queue("jobs")
    for n in range(5):
        backend.publish_to_queue(make_message(f'"m{n}"'), queue)
    handled: list[str] = []

    async def handle(payload: str) -> None:
        handled.append(payload)

    async def consume() -> int:
        dispatcher = AsyncMessageDispatcher(
            JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handle)]
        )
        while len(handled) < 5:
            await dispatcher.consume_event("jobs", max_messages=10, wait_seconds=1)
        return threading.get_ident()

    loop_thread = asyncio.run(consume())
    assert sorted(handled) == [f"m{n}" for n in range(5)]
    acknowledgements = [thread for call, thread in backend.threads if call == "acknowledge"]
    assert acknowledgements and set(acknowledgements) == {loop_thread}
    assert backend.queue_stats("jobs").total == 0
