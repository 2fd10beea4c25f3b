"""A NATS connection cut mid-stream (through a TCP relay the test owns) loses nothing, for
the blocking backend under the threaded dispatcher and the asyncio backend under the asyncio
dispatcher. The shared server is never touched: only the relay's connections break."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator

import pytest
from nats_support import TcpRelay

from melange import Consumer, MessageDispatcher, QueuePublisher
from melange.aio import AsyncMessageDispatcher
from melange.backends.nats import AsyncNATSBackend, NATSBackend
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
    make_nats: Callable[..., NATSBackend], proxy: TcpRelay, caplog: pytest.LogCaptureFixture
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
        from melange.models import Message

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
