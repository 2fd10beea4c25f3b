""":class:`AsyncKafkaBackend`: the Kafka backend for asyncio code, on aiokafka.

Publishing, receiving and settling are native: an ``AIOKafkaProducer`` (``acks=all``,
idempotent unless told otherwise) whose batches are sent together and awaited once, and an
``AIOKafkaConsumer`` per queue (:mod:`melange.backends.kafka.async_reader`), with the same
ledger, record layout and commits as the blocking backend: each consumes what the other
published. Declaring and deleting queues and topics, which is rare, goes through the blocking
backend's administration (librdkafka) on a worker thread.

Not confluent-kafka's own asyncio clients: its producer (``confluent_kafka.aio``, 2.16)
cannot carry record headers, which hold Melange's envelope.

The clients belong to the event loop they were first used on; use the backend from that
loop only, and ``await backend.aclose()`` there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the asyncio Kafka backend needs aiokafka ({exc}): pip install 'melange[kafka]'"
    ) from exc

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import BackendCapabilities
from melange.backends.kafka.async_reader import AsyncQueueReader
from melange.backends.kafka.backend import KafkaBackend, check_sizes, publish_keywords
from melange.backends.kafka.retries import later_attempt
from melange.backends.kafka.wire import (
    RecordHeaders,
    dead_letter_headers,
    encode_body,
    encode_headers,
    receipt_of,
    record_key,
)
from melange.exceptions import BatchPublishError, PublishError
from melange.models import Message, QueueWrapper, TopicWrapper


class AsyncKafkaBackend(AsyncMessagingBackend):
    """Queues and topics on Apache Kafka, for asyncio code (aiokafka).

    Takes the arguments of :class:`~melange.backends.kafka.backend.KafkaBackend`, and:

    Args:
        aiokafka_config: Further arguments of the aiokafka clients (``security_protocol``,
            ``sasl_mechanism``, ``ssl_context``...); ``client_config`` holds librdkafka's,
            for the administration. Neither is shown in a ``repr`` or an error.
    """

    name = "kafka"
    loop_wait_seconds = 1.0

    def __init__(
        self,
        url: str | None = None,
        *,
        aiokafka_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        #: Declarations and inspection, on worker threads; its own clients carry no messages.
        self.backend = KafkaBackend(url, **options) if url is not None else KafkaBackend(**options)
        self._client = dict(aiokafka_config or {})
        self._options = options
        self._producer: AIOKafkaProducer | None = None
        self._readers: dict[str, AsyncQueueReader] = {}
        self._interrupts = 0
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"AsyncKafkaBackend({self.backend.servers!r})"

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.backend.capabilities

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- topology (the blocking administration, on a thread) ---------------------------------

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
        reader = self._readers.get(queue_name)
        if reader is not None:
            spec = await self._run(self.backend._spec, queue_name)
            if spec.sources != reader.spec.sources:
                reader.subscribe(spec)
        return result

    async def delete_queue(self, queue: QueueWrapper) -> None:
        reader = self._readers.pop(queue.name, None)
        if reader is not None:
            await reader.close()
        await self._run(self.backend.delete_queue, queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._run(self.backend.delete_topic, topic)

    # -- publishing -------------------------------------------------------------------------

    async def _started_producer(self) -> AIOKafkaProducer:
        async with self._guard():
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.backend.servers.split(","),
                    acks="all",
                    enable_idempotence=self.backend.settings.idempotence,
                    # No lingering: a publish waits for its record, and records sent while one
                    # is in flight are batched anyway.
                    linger_ms=0,
                    **self._client,
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def produce(
        self,
        topic: str,
        records: Sequence[tuple[Message, RecordHeaders]],
        partition: int | None = None,
    ) -> None:
        """Send every record, then wait once for the brokers to confirm them all.

        Raises ``PublishError`` (one record) or ``BatchPublishError`` naming the refused ones.
        """
        producer = await self._started_producer()
        timeout = float(self._options.get("publish_timeout", 30.0))
        futures: list[asyncio.Future[Any]] = []
        for message, headers in records:
            futures.append(
                await producer.send(
                    topic,
                    value=encode_body(message),
                    key=record_key(message),
                    partition=partition,
                    headers=[(name, _bytes(value)) for name, value in headers],
                )
            )
        failures: dict[int, str] = {}
        # Each confirmation awaited directly under one deadline: no gathering future or
        # wait_for wrapper between it and this task, each of which cost a turn of the loop
        # per publish (and made the sender wake once more for the next record).
        try:
            async with asyncio.timeout(timeout):
                for index, future in enumerate(futures):
                    try:
                        await future
                    except Exception as exc:  # refused: the others may have gone through
                        failures[index] = str(exc)
        except TimeoutError:
            for future in futures:
                future.cancel()
            raise PublishError(
                f"Kafka did not confirm {len(records)} message(s) to {topic} within {timeout:g}s"
            ) from None
        if failures:
            if len(records) == 1:
                raise PublishError(f"Kafka refused the message to {topic}: {failures[0]}")
            raise BatchPublishError(failures)

    async def _publish(
        self, target: str, messages: Sequence[Message], kwargs: Mapping[str, Any], *, topic: bool
    ) -> None:
        publish_keywords(messages, kwargs, topic=topic)
        if not messages:
            return
        check_sizes(messages, self.backend.capabilities.max_message_size)
        await self.produce(target, [(m, encode_headers(m)) for m in messages])

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self.publish_batch_to_queue([message], queue, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        if queue.name not in self.backend.admin.catalogue.queues:  # known: no thread hop
            await self.get_queue(queue.name)
        await self._publish(queue.name, messages, kwargs, topic=False)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self.publish_batch_to_topic([message], topic, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        if topic.name not in self.backend.admin.catalogue.topics:
            await self.get_topic(topic.name)
        await self._publish(topic.name, messages, kwargs, topic=True)

    # -- consuming --------------------------------------------------------------------------

    async def _reader(self, queue_name: str) -> AsyncQueueReader:
        reader = self._readers.get(queue_name)
        if reader is not None:
            return reader
        async with self._guard():
            reader = self._readers.get(queue_name)
            if reader is None:
                spec = await self._run(self.backend.consumed_spec, queue_name)
                reader = AsyncQueueReader(
                    self.backend.settings,
                    self._client,
                    spec,
                    self.backend.admin.group(queue_name),
                    float(self._options.get("rebalance_drain_timeout", 10.0)),
                    float(self._options.get("join_timeout", 60.0)),
                    self.produce,
                )
                await reader.start()
                self._readers[queue_name] = reader
        return reader

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10), waiting up to ``wait_seconds``; the
        first receive of a queue joins its consumer group."""
        max_messages = int(kwargs.get("max_messages") or 10)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        wait = float(kwargs.get("wait_seconds") or 0.0)
        reader = await self._reader(queue.name)
        interrupts = self._interrupts
        return await reader.receive(max_messages, wait, lambda: self._interrupts != interrupts)

    def _held_by(self, message: Message) -> tuple[AsyncQueueReader, Any] | None:
        receipt = receipt_of(message)
        reader = self._readers.get(receipt.queue)
        return (reader, receipt) if reader is not None else None

    async def acknowledge(self, message: Message) -> None:
        held = self._held_by(message)
        if held is not None:
            held[0].settle(held[1])

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await self.acknowledge(message)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`KafkaBackend.nack`: a retry record on a standard queue, the record kept
        by the consumer on a FIFO queue."""
        await self._later(message, delay, failed=True)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`KafkaBackend.release`."""
        await self._later(message, delay, failed=False)

    async def _later(self, message: Message, delay: float, failed: bool) -> None:
        held = self._held_by(message)
        if held is None:
            return
        reader, receipt = held
        retry = later_attempt(reader.spec, message, receipt, delay, failed)
        if retry is None:
            reader.give_back(message, receipt, delay, failed)
            return
        if not reader.holds(receipt):
            return  # its partition moved: the new owner delivers it again
        await self.produce(retry[0], [retry[1]])
        reader.settle(receipt)

    def holds(self, message: Message) -> bool:
        held = self._held_by(message)
        return held is not None and held[0].holds(held[1])

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        receipt = receipt_of(message)
        spec = await self._run(self.backend.admin.queue, receipt.queue)
        if spec is None or spec.dead_letter_queue is None:
            return False
        await self.produce(
            spec.dead_letter_queue,
            [(message, dead_letter_headers(message, receipt.queue, headers))],
        )
        held = self._held_by(message)
        if held is not None:
            held[0].settle(held[1])
        return True

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """Nothing to do: Kafka has no leases."""

    def visibility_timeout_for(self, message: Message) -> float | None:
        return None

    def interrupt(self) -> None:
        self._interrupts += 1

    async def aclose(self) -> None:
        """Commit what is settled, leave the groups, flush and close the clients."""
        self.interrupt()
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()
            except KafkaError as exc:
                raise PublishError(f"closing the Kafka producer failed: {exc}") from exc
        await self._run(self.backend.close_connection)


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


__all__ = ["AsyncKafkaBackend"]
