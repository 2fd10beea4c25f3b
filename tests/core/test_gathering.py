"""When a receiver pauses to take a busy queue's messages together."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from melange.backends.gathering import BUSY_WINDOW, GATHER_SECONDS, BusyQueues
from melange.backends.interfaces import MessagingBackend
from melange.backends.loop_wait import LoopReceiver
from melange.models import Message, QueueWrapper


def test_a_quiet_queue_is_received_from_at_once() -> None:
    queues = BusyQueues(lambda: 100.0)
    assert not queues.busy("orders")
    assert queues.gather_seconds("orders") == 0.0


def test_a_queue_that_just_delivered_gathers_until_its_window_passes() -> None:
    # A frozen clock: real time passing between two lines must not decide the outcome.
    now = [100.0]
    queues = BusyQueues(lambda: now[0])
    queues.delivered("orders")
    now[0] += BUSY_WINDOW / 2
    assert queues.gather_seconds("orders") == GATHER_SECONDS
    # Other queues are not busy because one is.
    assert queues.gather_seconds("invoices") == 0.0
    now[0] += 2 * BUSY_WINDOW
    assert queues.gather_seconds("orders") == 0.0


def test_the_pause_is_short_beside_the_window() -> None:
    # A queue fed faster than once per window pays the pause; it must stay well below it.
    assert 0 < GATHER_SECONDS <= BUSY_WINDOW / 5


def _publish_slowly(backend: MessagingBackend, queue: QueueWrapper, n: int) -> None:
    # A publisher feeding the queue about once every 0.1-0.2 ms: a receiver woken by each
    # publish would take the messages one at a time.
    for i in range(n):
        backend.publish_to_queue(Message.create(str(i), 1, "json"), queue)
        time.sleep(0.0001)


Receive = Callable[[QueueWrapper, int, float], list[Message]]


@pytest.fixture(params=["threaded", "asyncio"])
def receive(
    request: pytest.FixtureRequest, embedded_backend: MessagingBackend
) -> Iterator[Receive]:
    """A receive as each driver makes it: the threaded one calls the backend's blocking
    ``retrieve_messages``, the asyncio one waits on its event loop (``LoopReceiver``)."""
    if request.param == "threaded":
        yield lambda queue, most, wait: embedded_backend.retrieve_messages(
            queue, max_messages=most, wait_seconds=wait
        )
        return
    loop = asyncio.new_event_loop()

    async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(None, fn, *args)

    receiver = LoopReceiver(embedded_backend, run_blocking)

    def on_the_loop(queue: QueueWrapper, most: int, wait: float) -> list[Message]:
        received = loop.run_until_complete(receiver.receive(queue, most, wait))
        assert received is not None, "the loop receiver handed the wait to a thread"
        return received

    yield on_the_loop
    loop.close()


def test_a_receive_takes_a_busy_queues_messages_together(
    embedded_backend: MessagingBackend, receive: Receive
) -> None:
    queue, _ = embedded_backend.declare_queue("orders")
    embedded_backend.publish_to_queue(Message.create("first", 1, "json"), queue)
    # One delivery makes the queue busy for this backend's receivers.
    first = receive(queue, 10, 1)
    embedded_backend.acknowledge_batch(first)

    n = 200
    publisher = threading.Thread(target=_publish_slowly, args=(embedded_backend, queue, n))
    receives = received = 0
    publisher.start()
    try:
        while received < n:
            batch = receive(queue, 10, 5)
            assert batch, "a receive came back empty while messages were being published"
            receives += 1
            received += len(batch)
            embedded_backend.acknowledge_batch(batch)
    finally:
        publisher.join()
    # Without the pause nearly every publish is a receive of its own (about 200 here); with
    # it, each receive takes what a millisecond of publishing brought.
    assert receives <= n // 2, f"{receives} receives for {n} messages"


def test_a_quiet_queues_message_is_received_without_the_pause(
    embedded_backend: MessagingBackend, receive: Receive
) -> None:
    queue, _ = embedded_backend.declare_queue("orders")
    got: list[list[Message]] = []
    receiver = threading.Thread(target=lambda: got.append(receive(queue, 10, 5)))
    receiver.start()
    time.sleep(0.05)  # the receiver is waiting
    embedded_backend.publish_to_queue(Message.create("only", 1, "json"), queue)
    receiver.join(timeout=5)
    assert [m.content for m in got[0]] == ["only"]
