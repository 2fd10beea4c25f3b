"""A NATS connection cut mid-stream (through a TCP relay the test owns) loses nothing, for
the blocking backend under the threaded dispatcher and the asyncio backend under the asyncio
dispatcher. The shared server is never touched: only the relay's connections break."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from nats_support import TcpRelay

from melange import Consumer, MessageDispatcher, QueuePublisher
from melange.aio import AsyncMessageDispatcher
from melange.backends.nats import AsyncNATSBackend, NATSBackend
from melange.models import Message
from melange.serializers.json import JsonSerializer
from melange.testing import wait_until
from melange.testing.conformance import Topology

pytestmark = pytest.mark.nats


@pytest.fixture
def proxy(nats_url: str) -> Iterator[TcpRelay]:
    relay = TcpRelay(("127.0.0.1", int(nats_url.rsplit(":", 1)[1])))
    yield relay
    relay.close()


def cut_for_two_seconds(proxy: TcpRelay) -> threading.Timer:
    """Reset every relayed connection and refuse new ones for two seconds."""
    return proxy.outage(2.0)


def test_a_connection_cut_loses_nothing_for_the_blocking_backend(
    # The relay first: it goes last, after the backends closed their connections through it.
    proxy: TcpRelay,
    make_nats: Callable[..., NATSBackend],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="melange")
    relayed = f"nats://127.0.0.1:{proxy.port}"
    publisher_backend = make_nats(url=relayed, visibility_timeout=5)
    consumer_backend = make_nats(url=relayed, visibility_timeout=5)
    topology = Topology(publisher_backend)
    consumed: list[int] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=consumer_backend,
        consumers=[Consumer(on_message=lambda p: consumed.append(p["n"]))],
    )
    errors: list[Exception] = []
    try:
        queue = topology.queue(dlq=True)
        loop = threading.Thread(
            target=dispatcher.consume_loop,
            args=(queue.name,),
            kwargs={"install_signal_handlers": False, "on_exception": errors.append},
        )
        loop.start()
        publisher = QueuePublisher(JsonSerializer(), publisher_backend)
        for n in range(100):
            publisher.publish(queue.name, {"n": n})
        wait_until(lambda: len(consumed) >= 20, 30, "traffic")
        outage = cut_for_two_seconds(proxy)
        for n in range(100, 150):  # published during the outage: they wait for the reconnect
            publisher.publish(queue.name, {"n": n})
        outage.join()
        wait_until(lambda: set(consumed) >= set(range(150)), 60, "every message")
        duplicates = len(consumed) - len(set(consumed))
        print(f"\nNATS connection cut: 150 published, {len(consumed)} consumed, {duplicates} dup")
        assert any("lost" in r.getMessage() for r in caplog.records), "the cut went unnoticed"
    finally:
        dispatcher.stop()
        loop.join(30)
        topology.cleanup()
    assert not loop.is_alive()


def test_a_connection_cut_loses_nothing_for_the_asyncio_backend(
    make_async_nats: Callable[..., AsyncNATSBackend],
    make_nats: Callable[..., NATSBackend],
    proxy: TcpRelay,
) -> None:
    setup = make_nats()
    topology = Topology(setup)
    queue = topology.queue(dlq=True)
    relayed = f"nats://127.0.0.1:{proxy.port}"
    consumed: list[int] = []

    async def scenario() -> None:
        backend = make_async_nats(url=relayed, visibility_timeout=5)
        publisher_backend = make_async_nats(url=relayed)
        dispatcher = AsyncMessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Consumer(on_message=lambda p: consumed.append(p["n"]))],
        )
        handle = await publisher_backend.get_queue(queue.name)

        def message(n: int) -> Message:
            return Message.create(f'{{"n": {n}}}', "json", JsonSerializer().identifier())

        task = asyncio.create_task(
            dispatcher.consume_loop(queue.name, install_signal_handlers=False)
        )
        try:
            for n in range(100):
                await publisher_backend.publish_to_queue(message(n), handle)
            while len(consumed) < 20:
                await asyncio.sleep(0.05)
            outage = cut_for_two_seconds(proxy)
            for n in range(100, 150):
                await publisher_backend.publish_to_queue(message(n), handle)
            await asyncio.to_thread(outage.join)
            async with asyncio.timeout(60):
                while not set(consumed) >= set(range(150)):
                    await asyncio.sleep(0.05)
        finally:
            dispatcher.stop()
            await asyncio.wait_for(task, 30)
            await backend.aclose()
            await publisher_backend.aclose()

    try:
        asyncio.run(scenario())
    finally:
        topology.cleanup()
    duplicates = len(consumed) - len(set(consumed))
    print(f"\nNATS connection cut (asyncio): {len(consumed)} consumed, {duplicates} dup")
    assert set(consumed) >= set(range(150))


def _message(n: int) -> Message:
    return Message.create(f'{{"n": {n}}}', "json", JsonSerializer().identifier())


def _receive_and_acknowledge(backend: NATSBackend, queue_name: str) -> None:
    """Publish four messages and acknowledge three, so that each of the backend's connections
    (its publishing one, its receiving one and the loop's) was used and has acknowledgements
    the server has not confirmed: the receiving one carries them with its next pull request,
    the loop sends those no receive took."""
    queue = backend.get_queue(queue_name)
    for n in range(4):
        backend.publish_to_queue(_message(n), queue)
    first = backend.retrieve_messages(queue, max_messages=2, wait_seconds=5)
    backend.acknowledge_batch(first)
    second = backend.retrieve_messages(queue, max_messages=1, wait_seconds=5)
    assert len(first) + len(second) == 3
    backend.acknowledge_batch(second)
    time.sleep(0.2)  # no receive follows: the loop sends them


@pytest.mark.parametrize("failure", ["cut", "outage"])
def test_closing_after_a_connection_cut_does_not_wait_for_the_lost_connection(
    proxy: TcpRelay, make_nats: Callable[..., NATSBackend], failure: str
) -> None:
    # Closing used to wait five seconds per connection for the answer to a ping sent over
    # the lost connection (nats-py forgets it when reconnecting): fifteen seconds in all.
    backend = make_nats(url=f"nats://127.0.0.1:{proxy.port}", visibility_timeout=30)
    queue = Topology(backend).queue()
    _receive_and_acknowledge(backend, queue.name)
    if failure == "cut":
        assert proxy.cut() >= 6  # three connections, each relayed through two sockets
        outage = None
    else:
        outage = proxy.outage(3.0)
    try:
        started = time.monotonic()
        backend.close_connection()
        took = time.monotonic() - started
    finally:
        if outage is not None:
            outage.cancel()
    print(f"\nNATS close after a {failure}: {took:.3f}s")
    assert took < 1.5


def test_acknowledgements_sent_just_before_close_reach_the_server(
    make_nats: Callable[..., NATSBackend],
) -> None:
    backend = make_nats(visibility_timeout=30)
    observer = make_nats()
    queue = Topology(observer).queue()
    _receive_and_acknowledge(backend, queue.name)
    last = backend.retrieve_messages(backend.get_queue(queue.name), wait_seconds=5)
    assert len(last) == 1
    backend.acknowledge(last[0])  # queued: closing sends it and waits for the server
    backend.close_connection()
    # Unacknowledged, they would stay in flight for their 30 s leases.
    wait_until(lambda: observer.queue_depth(queue.name) == 0, 3, "the acknowledgements")
