"""The asyncio API: same decisions as the threaded one, async consumers awaited."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from melange import (
    Consumer,
    InMemoryMessagingBackend,
    JsonSerializer,
    MessagingBackendFactory,
    SingleDispatchConsumer,
    consumer,
    current_message,
)
from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher, AsyncTopicPublisher
from melange.deduplication.cache import InMemoryCache
from melange.models import FAILURE_REASON
from melange.policy import FailurePolicy


def setup() -> InMemoryMessagingBackend:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("q", "t", dead_letter_queue_name="q-dlq")
    return backend


def test_async_consumers_are_awaited_and_messages_acknowledged() -> None:
    backend = setup()
    seen: list[Any] = []

    async def handle(message: Any) -> None:
        await asyncio.sleep(0)
        assert current_message() is not None
        seen.append(message)

    async def main() -> None:
        publisher = AsyncQueuePublisher(JsonSerializer(), backend)
        await publisher.publish("q", {"n": 1})
        await AsyncTopicPublisher(JsonSerializer(), backend).publish("t", {"n": 2})
        d = AsyncMessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
        assert await d.consume_event("q") == 2

    asyncio.run(main())
    assert seen == [{"n": 1}, {"n": 2}]
    assert backend.queue_depth("q") == 0


def test_async_single_dispatch_and_sync_consumers_mix() -> None:
    backend = setup()
    seen: list[str] = []

    class Handlers(SingleDispatchConsumer):
        @consumer
        async def on_dict(self, event: dict) -> None:  # type: ignore[type-arg]
            seen.append("async")

    async def main() -> None:
        await AsyncQueuePublisher(JsonSerializer(), backend).publish("q", {"n": 1})
        d = AsyncMessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Handlers(), Consumer(lambda m: seen.append("sync"))],
        )
        await d.consume_event("q")

    asyncio.run(main())
    assert seen == ["async", "sync"]


def test_async_failures_follow_the_policy_to_the_dead_letter_queue() -> None:
    backend = setup()

    async def broken(message: Any) -> None:
        raise RuntimeError("async boom")

    async def main() -> None:
        await AsyncQueuePublisher(JsonSerializer(), backend).publish("q", {"n": 1})
        d = AsyncMessageDispatcher(
            JsonSerializer(),
            cache=InMemoryCache(),
            backend=backend,
            consumers=[Consumer(broken)],
            failure_policy=FailurePolicy.no_delay(max_attempts=2),
        )
        await d.consume_event("q")
        await d.consume_event("q")
        assert d.stats.dead_lettered == 1

    asyncio.run(main())
    [dead] = backend.peek("q-dlq")
    assert "async boom" in dead.headers[FAILURE_REASON]


def test_async_loop_processes_concurrently_and_stops() -> None:
    backend = setup()
    total = 30
    done: list[int] = []
    active = {"now": 0, "max": 0}

    async def handle(message: Any) -> None:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.01)
        active["now"] -= 1
        done.append(message["n"])
        if len(done) == total:
            d.stop()

    d = AsyncMessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])

    async def main() -> None:
        publisher = AsyncQueuePublisher(JsonSerializer(), backend)
        for n in range(total):
            await publisher.publish("q", {"n": n})
        await asyncio.wait_for(d.consume_loop("q", concurrency=5), timeout=20)

    asyncio.run(main())
    assert sorted(done) == list(range(total))
    assert active["max"] > 1
    assert backend.queue_depth("q") == 0


def test_sync_dispatcher_reports_an_async_consumer_clearly() -> None:
    from melange import MessageDispatcher, QueuePublisher

    backend = setup()
    errors: list[Exception] = []

    async def handle(message: Any) -> None: ...

    QueuePublisher(JsonSerializer(), backend).publish("q", {"n": 1})
    d = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
    d._on_exception = errors.append
    d.consume_event("q")
    assert "AsyncMessageDispatcher" in str(errors[0])


def test_async_loop_keeps_fifo_groups_in_order_even_when_a_message_fails() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("q.fifo")
    total = 24
    order: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    failed: set[int] = set()

    async def handle(message: Any) -> None:
        await asyncio.sleep(0.001)
        if message["i"] % 5 == 0 and message["i"] not in failed:
            failed.add(message["i"])
            raise RuntimeError("fails once")
        order[message["g"]].append(message["i"])
        if sum(map(len, order.values())) == total:
            d.stop()

    d = AsyncMessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(handle)],
        failure_policy=FailurePolicy.no_delay(max_attempts=5),
    )

    async def main() -> None:
        publisher = AsyncQueuePublisher(JsonSerializer(), backend)
        for i in range(total):
            g = "abc"[i % 3]
            await publisher.publish("q.fifo", {"g": g, "i": i}, message_group_id=g)
        await asyncio.wait_for(d.consume_loop("q.fifo", concurrency=4), timeout=30)

    asyncio.run(main())
    for values in order.values():
        assert values == sorted(values)
        assert len(values) == total // 3


@pytest.mark.rabbitmq
def test_publishers_and_dispatcher_await_an_async_backend_natively() -> None:
    from melange.backends.rabbitmq import AsyncRabbitMQBackend
    from service_check import require_service

    host, port = require_service("rabbitmq")
    queue = f"aio-native-{uuid.uuid4().hex[:10]}"
    topic = queue + "-events"
    seen: list[Any] = []

    async def handle(message: Any) -> None:
        seen.append(message["n"])
        if len(seen) == 4:
            dispatcher.stop()

    async def main() -> None:
        backend = AsyncRabbitMQBackend(url=f"amqp://guest:guest@{host}:{port}/")
        try:
            events = await backend.declare_topic(topic)
            await backend.declare_queue(queue, events, dead_letter_queue_name=queue + "-dlq")
            publisher = AsyncQueuePublisher(JsonSerializer(), backend)
            assert publisher.backend is backend
            await publisher.publish(queue, {"n": 1})
            await publisher.publish_batch(queue, [{"n": 2}, {"n": 3}])
            await AsyncTopicPublisher(JsonSerializer(), backend).publish(topic, {"n": 4})
            consuming = dispatcher_for(backend).consume_loop(
                queue, concurrency=2, install_signal_handlers=False
            )
            await asyncio.wait_for(consuming, 20)
        finally:
            for name in (queue, queue + "-dlq"):
                await backend.delete_queue(await backend.get_queue(name))
            await backend.delete_topic(await backend.get_topic(topic))
            await backend.aclose()

    dispatcher: AsyncMessageDispatcher

    def dispatcher_for(backend: Any) -> AsyncMessageDispatcher:
        nonlocal dispatcher
        dispatcher = AsyncMessageDispatcher(
            JsonSerializer(), backend=backend, consumers=[Consumer(handle)]
        )
        assert dispatcher.backend is backend
        return dispatcher

    asyncio.run(main())
    assert sorted(seen) == [1, 2, 3, 4]
    assert dispatcher.stats.acknowledged == 4
