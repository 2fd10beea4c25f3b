"""as_async and as_blocking undo each other; adapted calls run where they should."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from melange import Consumer, InMemoryMessagingBackend, JsonSerializer, MessagingBackendFactory
from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher, AsyncTopicPublisher
from melange.backends.async_interfaces import (
    AsyncMessagingBackend,
    BlockingBackendAdapter,
    as_async,
    overrides_holds,
)
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.testing.blocking import BlockingAsyncBackend, as_blocking


class NativeBackend(AsyncMessagingBackend):
    """An asynchronous backend over the in-memory broker that records the thread of each
    call, as a native asyncio client would run its I/O on the caller's loop."""

    name = "native-test"

    def __init__(self, backend: InMemoryMessagingBackend) -> None:
        self.memory = backend
        self.threads: set[str] = set()

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.memory.capabilities

    async def _on_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        await asyncio.sleep(0)
        return fn(*args, **kwargs)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return await self._on_loop(self.memory.declare_topic, topic_name)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        return await self._on_loop(self.memory.get_topic, topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return await self._on_loop(self.memory.get_queue, queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return await self._on_loop(
            self.memory.declare_queue,
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            **kwargs,
        )

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self._on_loop(self.memory.delete_queue, queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._on_loop(self.memory.delete_topic, topic)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self._on_loop(self.memory.publish_to_queue, message, queue, **kwargs)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self._on_loop(self.memory.publish_to_topic, message, topic, **kwargs)

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        kwargs["wait_seconds"] = 0  # never block the loop
        return await self._on_loop(self.memory.retrieve_messages, queue, **kwargs)

    async def acknowledge(self, message: Message) -> None:
        await self._on_loop(self.memory.acknowledge, message)

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        await self._on_loop(self.memory.acknowledge_batch, messages)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._on_loop(self.memory.nack, message, delay)

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return await self._on_loop(self.memory.dead_letter, message, headers)


class ThreadRecordingMemory(InMemoryMessagingBackend):
    """The in-memory backend (which never blocks), recording the thread of each lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []

    def get_queue(self, queue_name: str) -> QueueWrapper:
        self.lookups.append(threading.current_thread().name)
        return super().get_queue(queue_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        self.lookups.append(threading.current_thread().name)
        return super().get_topic(topic_name)


def memory_with_queue(memory: InMemoryMessagingBackend | None = None) -> InMemoryMessagingBackend:
    memory = memory if memory is not None else InMemoryMessagingBackend()
    MessagingBackendFactory(memory).init_queue("q", "t", dead_letter_queue_name="q-dlq")
    return memory


@pytest.fixture
def native() -> NativeBackend:
    return NativeBackend(memory_with_queue())


@pytest.fixture
def blocking(native: NativeBackend) -> Iterator[MessagingBackend]:
    wrapper = as_blocking(native)
    yield wrapper
    wrapper.close_connection()


# -- as_async unwraps as_blocking ------------------------------------------------------------


def test_as_async_of_as_blocking_is_the_async_backend(
    native: NativeBackend, blocking: MessagingBackend
) -> None:
    assert isinstance(blocking, BlockingAsyncBackend)
    assert as_async(blocking) is native


def test_async_dispatcher_awaits_the_wrapped_backend_on_its_own_loop(
    native: NativeBackend, blocking: MessagingBackend
) -> None:
    seen: list[Any] = []

    async def handle(message: Any) -> None:
        seen.append(message)

    async def main() -> None:
        await AsyncQueuePublisher(JsonSerializer(), blocking).publish("q", {"n": 1})
        await AsyncTopicPublisher(JsonSerializer(), blocking).publish("t", {"n": 2})
        dispatcher = AsyncMessageDispatcher(
            JsonSerializer(), backend=blocking, consumers=[Consumer(handle)]
        )
        assert dispatcher.backend is blocking  # as it was given
        assert await dispatcher.consume_event("q") == 2

    asyncio.run(main())
    assert seen == [{"n": 1}, {"n": 2}]
    # Every call ran on this thread's loop: none went through a worker thread and the
    # wrapper's loop thread.
    assert native.threads == {threading.current_thread().name}
    assert native.memory.queue_depth("q") == 0


def test_holds_of_an_unwrapped_backend_is_the_async_backends(blocking: MessagingBackend) -> None:
    # NativeBackend keeps the default holds(): it cannot orphan a message.
    assert overrides_holds(blocking) is False
    assert overrides_holds(as_async(blocking)) is False


# -- as_blocking unwraps as_async ------------------------------------------------------------


def test_as_blocking_of_as_async_is_the_blocking_backend() -> None:
    memory = InMemoryMessagingBackend()
    adapter = as_async(memory)
    assert isinstance(adapter, BlockingBackendAdapter)
    assert as_blocking(adapter) is memory


def test_round_trips_give_back_the_original() -> None:
    memory = InMemoryMessagingBackend()
    assert as_blocking(as_async(memory)) is memory
    native = NativeBackend(memory)
    wrapper = as_blocking(native)
    try:
        assert as_async(wrapper) is native
    finally:
        wrapper.close_connection()


# -- the adapter of a backend that never blocks ----------------------------------------------


def test_lookups_of_a_non_blocking_backend_run_inline_on_the_loop() -> None:
    memory = memory_with_queue(ThreadRecordingMemory())
    assert memory.blocking is False
    adapter = as_async(memory)

    async def main() -> None:
        queue = await adapter.get_queue("q")
        topic = await adapter.get_topic("t")
        assert (queue.name, topic.name) == ("q", "t")

    memory.lookups.clear()
    asyncio.run(main())
    assert memory.lookups == [threading.current_thread().name] * 2


def test_lookups_of_a_blocking_backend_run_on_worker_threads() -> None:
    memory = memory_with_queue(ThreadRecordingMemory())
    memory.blocking = True  # as a networked backend would be
    adapter = as_async(memory)

    async def main() -> None:
        await adapter.get_queue("q")
        await adapter.get_topic("t")

    memory.lookups.clear()
    asyncio.run(main())
    assert len(memory.lookups) == 2
    assert threading.current_thread().name not in memory.lookups


def test_the_commands_describe_an_asynchronous_backend_too() -> None:
    from melange.cli._common import describe_backend

    memory = InMemoryMessagingBackend()
    assert describe_backend(as_async(memory)) == f"<as_async({memory!r})>"
    assert describe_backend(NativeBackend(memory)) == "NativeBackend"
