"""Messages waiting for a delayed retry are never lost, and lost connections repeat little."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest

from melange.aio import AsyncMessageDispatcher
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq.io_thread import MAX_QUEUED_POSTS
from melange.backends.rabbitmq.topology import (
    DELAY_LADDER_MS,
    retry_arguments,
    retry_queue_name,
)
from melange.consumers import Consumer
from melange.context import current_message
from melange.message_dispatcher import MessageDispatcher
from melange.models import Message
from melange.policy import FailurePolicy
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import Topology, make_message

pytestmark = pytest.mark.rabbitmq


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def at_least(handled: Counter[int], progress: int) -> Callable[[], bool]:
    return lambda: len(handled) >= progress


def test_no_retry_queue_expires_at_any_delay_level(
    rabbit: RabbitMQBackend, topology: Topology, rabbit_address: tuple[str, int]
) -> None:
    queue = topology.queue(dlq=True)
    for n in range(len(DELAY_LADDER_MS)):
        rabbit.publish_to_queue(make_message(str(n)), queue)
    received = []
    while len(received) < len(DELAY_LADDER_MS):
        received += rabbit.retrieve_messages(queue, max_messages=10, wait_seconds=5)
    for message, step in zip(received, DELAY_LADDER_MS, strict=True):
        rabbit.nack(message, step / 1000)
    host, port = rabbit_address
    connection = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    try:
        for step in DELAY_LADDER_MS:
            name = retry_queue_name(queue.name, step)
            channel = connection.channel()
            waiting = channel.queue_declare(name, passive=True).method.message_count
            # (Shorter delays may be over already.)
            assert waiting == 1 or step < 2_000, f"{name} holds {waiting} messages"
            # The broker refuses a lease the queue does not have, and says it has none: a
            # queue lease would delete the waiting message with the queue.
            leased = {**retry_arguments(queue.name, step), "x-expires": 3_600_000}
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                channel.queue_declare(name, durable=True, arguments=leased)
            assert "x-expires" in refused.value.reply_text
            assert "current is none" in refused.value.reply_text
        rabbit.delete_queue(queue)
        # Deleting the queue deletes its retry queues: nothing is left behind.
        for step in DELAY_LADDER_MS:
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
                channel.queue_declare(retry_queue_name(queue.name, step), passive=True)
            assert missing.value.reply_code == 404
    finally:
        connection.close()


@pytest.mark.slow
def test_retries_keep_flowing_through_a_retry_queue_for_longer_than_a_queue_lease(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    """Before, the 5 s retry queue was deleted about 65 s after its creation, with the
    messages waiting in it, although nacks kept redeclaring it."""
    publisher_backend = make_rabbit()
    consumer_backend = make_rabbit()
    queue = topology.queue(dlq=True)
    publisher = QueuePublisher(JsonSerializer(), publisher_backend)
    outcomes: dict[int, list[int]] = {}
    lock = threading.Lock()

    def handle(payload: dict[str, int]) -> None:
        message = current_message()
        assert message is not None
        attempt = message.attempt or 1
        with lock:
            outcomes.setdefault(payload["n"], []).append(attempt)
        if attempt == 1:
            raise TimeoutError("the first attempt of every message fails")

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=consumer_backend,
        consumers=[Consumer(handle)],
        failure_policy=FailurePolicy(max_attempts=3, initial_delay=5.0, jitter=0.0),
    )
    loop = threading.Thread(
        target=dispatcher.consume_loop,
        args=(queue.name,),
        kwargs={"install_signal_handlers": False},
    )
    loop.start()
    published = 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < 70:  # past delay + 60 s, the lease it had
            publisher.publish(queue.name, {"n": published})
            published += 1
            time.sleep(0.5)

        def all_retried() -> bool:
            with lock:
                return len(outcomes) == published and all(
                    seen[-1] == 2 for seen in outcomes.values()
                )

        wait_until(all_retried, 30, "every message's retry")
    finally:
        dispatcher.stop()
        loop.join(30)
        dispatcher.close()
    lost = sorted(n for n, seen in outcomes.items() if seen != [1, 2])
    print(f"\n{published} messages retried over 70 s through one retry queue: {len(lost)} lost")
    assert not lost
    assert dispatcher.stats.dead_lettered == 0


def test_a_lost_connection_repeats_at_most_the_handlers_in_flight(
    make_rabbit: Callable[..., RabbitMQBackend],
    topology: Topology,
    kill_connections: Callable[[], int],
) -> None:
    """Messages buffered from a connection that is gone are not started (the broker delivers
    them again): duplicates are bounded by the workers, not by the prefetch window (100).

    Each cut comes while every worker is held inside its handler and the acknowledgements of
    what finished before had time to reach the broker: an acknowledgement the broker had not
    processed when the connection went is lost with it, however fast the client sent it, and
    how many those are depends on the broker's lag, not on the client. So what comes again is
    the held messages and, if the dispatcher started any, the ones buffered from the lost
    connection.
    """
    count, workers = 3000, 4
    publisher_backend = make_rabbit(connection_name="publisher")
    consumer_backend = make_rabbit(reconnect_max_delay=0.5)
    queue = topology.queue(dlq=True)
    messages = [make_message(f'{{"n": {n}}}') for n in range(count)]
    for start in range(0, count, 500):
        publisher_backend.publish_batch_to_queue(messages[start : start + 500], queue)
    handled: Counter[int] = Counter()
    lock = threading.Lock()
    running = threading.Event()
    running.set()
    held = threading.Semaphore(0)

    def handle(payload: dict[str, int]) -> None:
        if not running.is_set():
            held.release()
            running.wait()
        time.sleep(0.002)
        with lock:
            handled[payload["n"]] += 1

    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=consumer_backend, consumers=[Consumer(handle)]
    )
    loop = threading.Thread(
        target=dispatcher.consume_loop,
        args=(queue.name,),
        kwargs={"workers": workers, "install_signal_handlers": False},
    )
    loop.start()
    cuts = (500, 1200, 1900)
    try:
        for progress in cuts:
            wait_until(at_least(handled, progress), 60, f"{progress} messages handled")
            running.clear()
            for _ in range(workers):
                assert held.acquire(timeout=30), "every worker held in its handler"
            time.sleep(0.5)  # what finished before is acknowledged on the broker
            assert kill_connections() >= 1
            running.set()
        wait_until(lambda: len(handled) == count, 120, "every message to be handled")
    finally:
        running.set()
        dispatcher.stop()
        loop.join(30)
        dispatcher.close()
    repeated = sum(times - 1 for times in handled.values())
    print(f"\n{len(cuts)} connections closed, {workers} workers: {repeated} handled twice")
    # Per cut: the messages held in their handlers, whose acknowledgements go to a lost
    # connection (and the next few a worker may take before the loss is seen); never the
    # messages buffered from the lost connection, up to the prefetch window.
    assert repeated <= len(cuts) * 2 * workers


@pytest.mark.parametrize("driver", ["threaded", "asyncio"])
def test_messages_of_a_lost_connection_are_not_held_and_not_started(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology, proxy: Any, driver: str
) -> None:
    backend = make_rabbit(port=proxy.port, heartbeat=2, reconnect_max_delay=0.2)
    queue = topology.queue(dlq=True)
    for n in range(3):
        topology.backend.publish_to_queue(make_message(f'{{"n": {n}}}'), queue)
    received: list[Message] = []
    while len(received) < 3:
        received += backend.retrieve_messages(queue, max_messages=10, wait_seconds=5)
    assert all(backend.holds(m) for m in received)
    proxy.cut()
    wait_until(lambda: not any(backend.holds(m) for m in received), 10, "the loss to show")
    ran: list[dict[str, int]] = []
    options: dict[str, Any] = {"backend": backend, "consumers": [Consumer(ran.append)]}
    dispatcher: MessageDispatcher | AsyncMessageDispatcher
    if driver == "asyncio":
        dispatcher = AsyncMessageDispatcher(JsonSerializer(), **options)
        asyncio.run(dispatcher.dispatch(received, queue.name))
    else:
        dispatcher = MessageDispatcher(JsonSerializer(), **options)
        dispatcher.dispatch(received, queue.name)
    # Not started: the broker delivers them again, on the new connection.
    assert ran == []
    assert dispatcher.stats.released == 3
    again: list[Message] = []
    deadline = time.monotonic() + 20
    while len(again) < 3 and time.monotonic() < deadline:
        again += backend.retrieve_messages(queue, max_messages=10, wait_seconds=1)
    assert sorted(m.content for m in again) == sorted(m.content for m in received)
    assert all(backend.holds(m) and m.attempt == 1 for m in again)


def test_posted_operations_wait_while_the_io_thread_is_behind(
    make_rabbit: Callable[..., RabbitMQBackend],
) -> None:
    """Acknowledgements queued for a busy I/O thread stop at MAX_QUEUED_POSTS: a lost
    connection then loses at most that many, however far behind the thread fell."""
    backend = make_rabbit()
    backend.declare_queue("melange-test-posts-backpressure")  # connected, the thread idle
    link = backend._link
    busy = threading.Event()

    def stall(session: Any) -> None:
        busy.set()
        time.sleep(4.0)

    # Whoever runs it holds the connection's I/O for its duration, as a slow thread would.
    staller = threading.Thread(target=link.call, args=(stall, 10))
    staller.start()
    assert busy.wait(10), "the slow operation runs"
    ran: list[int] = []
    poster = threading.Thread(
        target=lambda: [link.post(lambda s, n=n: ran.append(n)) for n in range(40)]
    )
    poster.start()
    # Each post first waits up to 50 ms for the stalled I/O, then queues.
    deadline = time.monotonic() + 3.0
    while len(link._ops) < MAX_QUEUED_POSTS and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the I/O is still stalled: nothing more was queued meanwhile
    assert len(link._ops) == MAX_QUEUED_POSTS
    assert poster.is_alive(), "the poster waits for the queue to shrink"
    poster.join(30)
    staller.join(10)
    deadline = time.monotonic() + 10
    while len(ran) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == list(range(40)), "every posted operation ran, in order"
    backend.delete_queue(backend.get_queue("melange-test-posts-backpressure"))
