"""When a receiver pauses to take a busy queue's messages together."""

from __future__ import annotations

import threading
import time

from melange.backends.gathering import BUSY_WINDOW, GATHER_SECONDS, BusyQueues
from melange.backends.interfaces import MessagingBackend
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


def test_a_blocking_receive_takes_a_busy_queues_messages_together(
    embedded_backend: MessagingBackend,
) -> None:
    queue, _ = embedded_backend.declare_queue("orders")
    embedded_backend.publish_to_queue(Message.create("first", 1, "json"), queue)
    # One delivery makes the queue busy for this backend's receivers.
    first = embedded_backend.retrieve_messages(queue, max_messages=10, wait_seconds=1)
    embedded_backend.acknowledge_batch(first)

    n = 200
    publisher = threading.Thread(target=_publish_slowly, args=(embedded_backend, queue, n))
    receives = received = 0
    publisher.start()
    try:
        while received < n:
            batch = embedded_backend.retrieve_messages(queue, max_messages=10, wait_seconds=5)
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
    embedded_backend: MessagingBackend,
) -> None:
    queue, _ = embedded_backend.declare_queue("orders")
    got: list[list[Message]] = []
    receiver = threading.Thread(
        target=lambda: got.append(embedded_backend.retrieve_messages(queue, wait_seconds=5))
    )
    receiver.start()
    time.sleep(0.05)  # the receiver is waiting
    embedded_backend.publish_to_queue(Message.create("only", 1, "json"), queue)
    receiver.join(timeout=5)
    assert [m.content for m in got[0]] == ["only"]
