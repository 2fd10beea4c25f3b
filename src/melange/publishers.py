"""Publishers: serialize a message and hand it to a backend.

:class:`QueuePublisher` sends to one queue (one consumer group reads it);
:class:`TopicPublisher` sends to a topic that fans the message out to every subscribed queue::

    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("orders", {"id": 1})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from melange.backends.backend_manager import BackendManager
from melange.backends.interfaces import MessagingBackend
from melange.context import current_message
from melange.exceptions import DestinationNotFoundError
from melange.models import CAUSATION_ID, CORRELATION_ID, Message, QueueWrapper, TopicWrapper
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry, SerializerSource


class _Publisher:
    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
    ) -> None:
        if isinstance(serializer_registry, MessagingBackend) and backend is None:
            raise TypeError(
                f"{type(self).__name__} takes the serializer(s) first and the backend second"
            )
        self.serializer_registry = SerializerRegistry.coerce(
            serializer_registry if serializer_registry is not None else JsonSerializer()
        )
        if backend is not None and not isinstance(backend, MessagingBackend):
            raise TypeError(f"backend must be a MessagingBackend, got {type(backend).__name__}")
        self._backend = backend or BackendManager().get_backend()

    @property
    def backend(self) -> MessagingBackend:
        """The backend messages are handed to."""
        return self._backend

    def _build(
        self,
        data: Any,
        message_group_id: str | None,
        message_deduplication_id: str | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Message:
        serializer = self.serializer_registry.find_serializer_for(data)
        merged: dict[str, str] = {}
        cause = current_message()
        if cause is not None:
            # Published from inside a consumer: link the new message to the one being handled.
            merged[CAUSATION_ID] = cause.message_id
            merged[CORRELATION_ID] = cause.headers.get(CORRELATION_ID, cause.message_id)
        if headers:
            merged.update(headers)
        if correlation_id is not None:
            merged[CORRELATION_ID] = correlation_id
        if causation_id is not None:
            merged[CAUSATION_ID] = causation_id
        message = Message.create(
            serializer.serialize(data), serializer.manifest(data), serializer.identifier(), merged
        )
        message.group_id = message_group_id
        message.deduplication_id = message_deduplication_id
        return message


class QueuePublisher(_Publisher):
    """Publishes messages to queues.

    Args:
        serializer_registry: A serializer, a list of serializers (each picked by the type of the
            published object, the first being the default), a
            :class:`~melange.serializers.registry.SerializerRegistry`, or its 7.2.0 config dict.
            Defaults to JSON.
        backend: The backend; defaults to the one set on
            :class:`~melange.backends.backend_manager.BackendManager`.
    """

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
    ) -> None:
        super().__init__(serializer_registry, backend)
        self._queues: dict[str, QueueWrapper] = {}

    def _queue(self, queue_name: str) -> QueueWrapper:
        queue = self._queues.get(queue_name)
        if queue is None:
            queue = self._queues[queue_name] = self._backend.get_queue(queue_name)
        return queue

    def publish(
        self,
        queue_name: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it to ``queue_name``; returns the sent envelope.

        ``message_group_id`` and ``message_deduplication_id`` apply to FIFO queues. Raises
        :class:`~melange.exceptions.QueueNotFoundError` if the queue does not exist.
        """
        if not isinstance(queue_name, str):
            raise TypeError(f"queue_name must be a str, got {type(queue_name).__name__}")
        message = self._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        try:
            self._backend.publish_to_queue(message, self._queue(queue_name))
        except DestinationNotFoundError:
            self._queues.pop(queue_name, None)
            raise
        return message

    def publish_batch(
        self,
        queue_name: str,
        items: Iterable[Any],
        message_group_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> list[Message]:
        """Publish several messages in as few broker calls as the backend allows.

        Raises :class:`~melange.exceptions.BatchPublishError` naming the refused messages.
        """
        messages = [
            self._build(item, message_group_id, None, headers, None, None) for item in items
        ]
        if messages:
            self._backend.publish_batch_to_queue(messages, self._queue(queue_name))
        return messages


class TopicPublisher(_Publisher):
    """Publishes messages to topics, which fan them out to every subscribed queue.

    Takes the same arguments as :class:`QueuePublisher`.
    """

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
    ) -> None:
        super().__init__(serializer_registry, backend)
        self._topics: dict[str, TopicWrapper] = {}

    def _topic(self, topic_name: str) -> TopicWrapper:
        topic = self._topics.get(topic_name)
        if topic is None:
            topic = self._topics[topic_name] = self._backend.get_topic(topic_name)
        return topic

    def publish(
        self,
        topic_name: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it to ``topic_name``; returns the sent envelope.

        Raises :class:`~melange.exceptions.TopicNotFoundError` if the topic does not exist.
        """
        if not isinstance(topic_name, str):
            raise TypeError(f"topic_name must be a str, got {type(topic_name).__name__}")
        message = self._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        try:
            self._backend.publish_to_topic(message, self._topic(topic_name))
        except DestinationNotFoundError:
            self._topics.pop(topic_name, None)
            raise
        return message

    def publish_batch(
        self,
        topic_name: str,
        items: Iterable[Any],
        message_group_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> list[Message]:
        """Publish several messages to a topic in as few broker calls as the backend allows."""
        messages = [
            self._build(item, message_group_id, None, headers, None, None) for item in items
        ]
        if messages:
            self._backend.publish_batch_to_topic(messages, self._topic(topic_name))
        return messages


__all__ = ["QueuePublisher", "TopicPublisher"]
