"""Publishers: serialize a message and hand it to a backend.

:class:`QueuePublisher` sends to one queue (one consumer group reads it);
:class:`TopicPublisher` sends to a topic that fans the message out to every subscribed queue::

    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("orders", {"id": 1})
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from melange.backends.backend_manager import BackendManager
from melange.backends.interfaces import MessagingBackend
from melange.context import current_message
from melange.exceptions import DestinationNotFoundError, TopicNotFoundError
from melange.models import CAUSATION_ID, CORRELATION_ID, Message, QueueWrapper, TopicWrapper
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry, SerializerSource

logger = logging.getLogger("melange.publishers")


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


class _DestinationPublisher(_Publisher):
    """Publishing shared by queues and topics; subclasses say how to reach a destination."""

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
    ) -> None:
        super().__init__(serializer_registry, backend)
        # Handles are looked up once per destination (the backend caches URLs/ARNs too).
        self._handles: dict[str, Any] = {}

    def _lookup(self, name: str) -> Any:
        raise NotImplementedError

    def _send(self, message: Message, handle: Any) -> None:
        raise NotImplementedError

    def _send_batch(self, messages: list[Message], handle: Any) -> None:
        raise NotImplementedError

    def _handle(self, name: str) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"destination name must be a str, got {type(name).__name__}")
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self._lookup(name)
        return handle

    def _publish(self, name: str, message: Message) -> Message:
        handle = self._handle(name)
        try:
            self._send(message, handle)
        except DestinationNotFoundError:
            self._handles.pop(name, None)  # deleted since it was looked up
            raise
        return message

    def _publish_data(
        self,
        destination: str,
        data: Any,
        message_group_id: str | None,
        message_deduplication_id: str | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Message:
        message = self._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        return self._publish(destination, message)

    def publish_batch(
        self,
        destination: str,
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
            self._send_batch(messages, self._handle(destination))
        return messages


class QueuePublisher(_DestinationPublisher):
    """Publishes messages to queues.

    Args:
        serializer_registry: A serializer, a list of serializers (each picked by the type of the
            published object, the first being the default), a
            :class:`~melange.serializers.registry.SerializerRegistry`, or its 7.2.0 config dict.
            Defaults to JSON.
        backend: The backend; defaults to the one set on
            :class:`~melange.backends.backend_manager.BackendManager`.
    """

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
        """Serialize ``data`` and publish it to ``queue_name``; returns the envelope sent.

        Args:
            queue_name: The queue.
            data: The message; the serializer is chosen by its type.
            message_group_id: Ordering key, for FIFO queues.
            message_deduplication_id: Broker-side deduplication id, for FIFO queues.
            headers: Extra string headers to send along.
            correlation_id: Overrides the correlation id (by default, when publishing from
                inside a consumer, the one of the message being processed).
            causation_id: Overrides the causation id (by default the id of the message being
                processed).

        Raises:
            QueueNotFoundError: The queue does not exist.
            PublishError: The broker refused the message.
            SerializationError: ``data`` could not be serialized.
        """
        return self._publish_data(
            queue_name,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
        )

    def _lookup(self, name: str) -> QueueWrapper:
        return self._backend.get_queue(name)

    def _send(self, message: Message, handle: QueueWrapper) -> None:
        self._backend.publish_to_queue(message, handle)

    def _send_batch(self, messages: list[Message], handle: QueueWrapper) -> None:
        self._backend.publish_batch_to_queue(messages, handle)


class TopicPublisher(_DestinationPublisher):
    """Publishes messages to topics, which fan them out to every subscribed queue.

    Args:
        serializer_registry: As for :class:`QueuePublisher`.
        backend: As for :class:`QueuePublisher`.
        declare_topics: Create a topic that does not exist yet, once, on the first publish to
            it (with a warning in the log), as released versions did: publishing an event
            before anyone subscribed is normal in pub/sub. ``False`` raises
            :class:`~melange.exceptions.TopicNotFoundError` instead, which catches a
            misspelled topic name.
    """

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
        *,
        declare_topics: bool = True,
    ) -> None:
        super().__init__(serializer_registry, backend)
        self.declare_topics = declare_topics

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
        """Serialize ``data`` and publish it to ``topic_name``; returns the envelope sent.

        Takes the same arguments as :meth:`QueuePublisher.publish`; raises
        :class:`~melange.exceptions.TopicNotFoundError` if the topic does not exist.
        """
        return self._publish_data(
            topic_name,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
        )

    def _lookup(self, name: str) -> TopicWrapper:
        try:
            return self._backend.get_topic(name)
        except TopicNotFoundError:
            if not self.declare_topics:
                raise
        logger.warning(
            "topic %r did not exist and was created; pass declare_topics=False to the "
            "TopicPublisher to make this an error",
            name,
        )
        return self._backend.declare_topic(name)

    def _send(self, message: Message, handle: TopicWrapper) -> None:
        self._backend.publish_to_topic(message, handle)

    def _send_batch(self, messages: list[Message], handle: TopicWrapper) -> None:
        self._backend.publish_batch_to_topic(messages, handle)


__all__ = ["QueuePublisher", "TopicPublisher"]
