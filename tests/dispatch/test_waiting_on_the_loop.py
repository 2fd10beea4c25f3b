"""Receives of the embedded backends (in memory, SQLite) under asyncio wait on the event loop,
woken by publishes, interrupts and due times, instead of each holding a worker thread.

With a thread per waiting receive, asyncio consumers of more queues than the default
executor has threads queued behind one another: a message could wait a whole receive
timeout (a second) before any thread was free to look for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from melange.backends.async_interfaces import as_async
from melange.backends.interfaces import BackendCapabilities, MessagingBackend, QueueWatch
from melange.backends.loop_wait import can_wait_on_loop
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.models import Message, QueueWrapper
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import make_message

#: Threads the default executor of an event loop starts at most on this machine.
DEFAULT_EXECUTOR_THREADS: int = ThreadPoolExecutor()._max_workers


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    made: MessagingBackend = (
        InMemoryMessagingBackend()
        if request.param == "memory"
        else SQLiteBackend(tmp_path / "m.db")
    )
    yield made
    made.close_connection()


def test_the_embedded_backends_wait_on_the_loop(backend: MessagingBackend) -> None:
    assert can_wait_on_loop(backend)


def test_asyncio_consumers_of_more_queues_than_executor_threads_each_get_a_message_at_once(
    backend: MessagingBackend,
) -> None:
    queues = 2 * DEFAULT_EXECUTOR_THREADS + 4
    for n in range(queues):
        backend.declare_queue(f"q{n}")
    handled_at: dict[int, float] = {}

    async def handle(event: dict[str, int]) -> None:
        handled_at[event["n"]] = time.monotonic()

    async def scenario() -> list[float]:
        dispatchers = [
            AsyncMessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
            for _ in range(queues)
        ]
        loops = [
            asyncio.create_task(d.consume_loop(f"q{n}", install_signal_handlers=False))
            for n, d in enumerate(dispatchers)
        ]
        await asyncio.sleep(0.5)  # every consumer is waiting on its empty queue
        latencies = []
        # The last consumers started first: with a thread per waiting receive, theirs are
        # the receives queued behind the others' waits.
        for n in reversed(range(queues)):
            sent = time.monotonic()
            backend.publish_to_queue(make_message(f'{{"n": {n}}}'), QueueWrapper(f"q{n}"))
            while n not in handled_at:
                assert time.monotonic() - sent < 5, f"q{n}'s message was never handled"
                await asyncio.sleep(0.002)
            latencies.append(handled_at[n] - sent)
        for dispatcher in dispatchers:
            dispatcher.stop()
        await asyncio.gather(*loops)
        return latencies

    latencies = asyncio.run(scenario())
    # A thread per waiting receive made the last queues' messages wait up to a second.
    assert max(latencies) < 0.25, [round(s, 3) for s in latencies]


def _receive_in_task(
    backend: MessagingBackend, queue: QueueWrapper, wait: float, meanwhile: Any
) -> tuple[list[Message], float]:
    async def scenario() -> tuple[list[Message], float]:
        adapted = as_async(backend)
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.2, meanwhile)
        received = await adapted.retrieve_messages(queue, max_messages=10, wait_seconds=wait)
        return received, time.monotonic() - started

    return asyncio.run(scenario())


def _publisher_thread(
    backend: MessagingBackend, queue: QueueWrapper, content: str = '"hello"'
) -> Callable[[], None]:
    """What publishes ``content`` to ``queue`` from a thread of its own, when called."""

    def publish_elsewhere() -> None:
        threading.Thread(
            target=backend.publish_to_queue, args=(make_message(content), queue)
        ).start()

    return publish_elsewhere


def test_a_publish_from_another_thread_wakes_the_waiting_receive(
    backend: MessagingBackend,
) -> None:
    queue, _ = backend.declare_queue("jobs")

    received, took = _receive_in_task(backend, queue, 10, _publisher_thread(backend, queue))
    assert [m.content for m in received] == ['"hello"']
    assert 0.2 <= took < 1.5


def test_an_interrupt_ends_the_waiting_receive_with_nothing(backend: MessagingBackend) -> None:
    queue, _ = backend.declare_queue("jobs")
    received, took = _receive_in_task(
        backend, queue, 10, lambda: threading.Thread(target=backend.interrupt).start()
    )
    assert received == []
    assert 0.2 <= took < 1.5


def test_a_message_nacked_with_a_delay_is_received_when_it_falls_due(
    backend: MessagingBackend,
) -> None:
    queue, _ = backend.declare_queue("jobs")
    backend.publish_to_queue(make_message('"later"'), queue)
    (message,) = backend.retrieve_messages(queue)
    backend.nack(message, delay=0.6)
    received, took = _receive_in_task(backend, queue, 10, lambda: None)
    assert [m.content for m in received] == ['"later"']
    assert 0.5 <= took < 2.0


def test_a_publish_from_another_process_is_seen_within_the_poll_interval(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.db"
    backend = SQLiteBackend(path, max_poll_interval=0.2)
    queue, _ = backend.declare_queue("jobs")
    publisher = (
        "import sys\n"
        "from melange.backends.sqlite import SQLiteBackend\n"
        "from melange.models import QueueWrapper\n"
        "from melange.testing.conformance import make_message\n"
        "with SQLiteBackend(sys.argv[1]) as b:\n"
        "    b.publish_to_queue(make_message('\"from afar\"'), QueueWrapper('jobs'))\n"
    )

    def publish_from_a_process() -> None:
        threading.Thread(
            target=subprocess.run,
            args=([sys.executable, "-c", publisher, os.fspath(path)],),
            kwargs={"check": True},
        ).start()

    try:
        received, took = _receive_in_task(backend, queue, 20, publish_from_a_process)
    finally:
        backend.close_connection()
    assert [m.content for m in received] == ['"from afar"']
    assert took < 10  # a process start, then at most one poll interval: not the 20 s wait


class CountingReceives(InMemoryMessagingBackend):
    """Changes how it receives, and not how it is polled or watched."""

    def __init__(self) -> None:
        super().__init__()
        self.receives = 0

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        self.receives += 1
        return super().retrieve_messages(queue, **kwargs)


def test_a_subclass_that_changes_how_it_receives_keeps_its_receive() -> None:
    backend = CountingReceives()
    assert not can_wait_on_loop(backend)
    queue, _ = backend.declare_queue("jobs")
    backend.publish_to_queue(make_message('"counted"'), queue)
    received, _ = _receive_in_task(backend, queue, 1, lambda: None)
    assert [m.content for m in received] == ['"counted"']
    assert backend.receives >= 1


class DescribedWatch(InMemoryMessagingBackend):
    """Watches queues as the in-memory backend does, counting the watches, and declares
    ``loop_wait`` only when told to."""

    def __init__(self, declared: bool) -> None:
        super().__init__()
        self.declared = declared
        self.watches = 0

    @property
    def capabilities(self) -> BackendCapabilities:
        return dataclasses.replace(super().capabilities, loop_wait=self.declared)

    def watch_queue(self, queue: QueueWrapper, wake: Callable[[], None]) -> QueueWatch | None:
        self.watches += 1
        return super().watch_queue(queue, wake)


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_a_receive_waits_on_the_loop_only_where_the_descriptor_says_loop_wait(
    declared: bool,
) -> None:
    backend = DescribedWatch(declared)
    assert can_wait_on_loop(backend) is declared
    queue, _ = backend.declare_queue("jobs")

    received, _ = _receive_in_task(backend, queue, 10, _publisher_thread(backend, queue))
    assert [m.content for m in received] == ['"hello"']
    # Undeclared, the waiting receive ran on a worker thread and never watched the queue.
    assert (backend.watches > 0) is declared


def test_under_synchronous_full_the_poll_leaves_the_loop_and_the_wait_does_not(
    tmp_path: Path,
) -> None:
    polled_on: list[int] = []

    class RecordingPolls(SQLiteBackend):
        def poll_queue(
            self, queue: QueueWrapper, max_messages: int = 10
        ) -> tuple[list[Message], float]:
            polled_on.append(threading.get_ident())
            return super().poll_queue(queue, max_messages)

    backend = RecordingPolls(tmp_path / "full.db", synchronous="FULL")
    queue, _ = backend.declare_queue("jobs")

    publish_elsewhere = _publisher_thread(backend, queue, '"durable"')
    try:
        loop_thread = threading.get_ident()  # asyncio.run runs its loop on this thread
        received, took = _receive_in_task(backend, queue, 10, publish_elsewhere)
    finally:
        backend.close_connection()
    assert [m.content for m in received] == ['"durable"']
    assert took < 1.5  # woken by the publish, not at the end of the wait
    assert polled_on and loop_thread not in polled_on
