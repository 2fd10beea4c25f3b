""":class:`AsyncKafkaBackend`: the Kafka backend under the asyncio contract.

confluent-kafka's asyncio producer (``confluent_kafka.aio.AIOProducer``, 2.16) cannot carry
record headers, which hold Melange's envelope, and its consumer runs the blocking client on
a thread pool. So this backend drives the librdkafka clients of a :class:`KafkaBackend`
itself: calls that wait on the brokers (receiving, publishing, declaring) run on worker
threads, settlements (which only update the consumer's ledger and queue an asynchronous
commit) run on the event loop. librdkafka does its network I/O on its own threads in
either case. The layout on the brokers is the same: each backend consumes what the other
published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import BackendCapabilities
from melange.backends.kafka.backend import KafkaBackend
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")


class AsyncKafkaBackend(AsyncMessagingBackend):
    """Queues and topics on Apache Kafka, for asyncio code.

    Takes the arguments of :class:`~melange.backends.kafka.backend.KafkaBackend`.
    """

    name = "kafka"

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self.backend = KafkaBackend(url, **options) if url is not None else KafkaBackend(**options)

    def __repr__(self) -> str:
        return f"AsyncKafkaBackend({self.backend.servers!r})"

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.backend.capabilities

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        result: TopicWrapper = await self._run(self.backend.declare_topic, topic_name)
        return result

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        result: TopicWrapper = await self._run(self.backend.get_topic, topic_name)
        return result

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        result: QueueWrapper = await self._run(self.backend.get_queue, queue_name)
        return result

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        result: tuple[QueueWrapper, QueueWrapper | None] = await self._run(
            self.backend.declare_queue,
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            **kwargs,
        )
        return result

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self._run(self.backend.delete_queue, queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._run(self.backend.delete_topic, topic)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self._run(self.backend.publish_to_queue, message, queue, **kwargs)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self._run(self.backend.publish_to_topic, message, topic, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        await self._run(self.backend.publish_batch_to_queue, messages, queue, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        await self._run(self.backend.publish_batch_to_topic, messages, topic, **kwargs)

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        result: list[Message] = await self._run(self.backend.retrieve_messages, queue, **kwargs)
        return result

    async def acknowledge(self, message: Message) -> None:
        self.backend.acknowledge(message)

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        self.backend.acknowledge_batch(messages)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._run(self.backend.nack, message, delay)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        self.backend.release(message, delay)

    def holds(self, message: Message) -> bool:
        return self.backend.holds(message)

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        result: bool = await self._run(self.backend.dead_letter, message, headers)
        return result

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """Nothing to do: Kafka has no leases."""

    def visibility_timeout_for(self, message: Message) -> float | None:
        return None

    def interrupt(self) -> None:
        self.backend.interrupt()

    async def aclose(self) -> None:
        await self._run(self.backend.close_connection)


__all__ = ["AsyncKafkaBackend"]
