"""The asyncio API: publishers and a dispatcher for ``async`` services.

The dispatcher is the same engine as the threaded one (see :mod:`melange.dispatch.aio`).
Consumers may be ``async``: a consumer whose ``on_message`` (or ``@consumer`` method, or
``process``) is a coroutine function is awaited; plain ones run on worker threads.

Both the publishers and the dispatcher take a blocking
:class:`~melange.backends.interfaces.MessagingBackend` or an
:class:`~melange.backends.async_interfaces.AsyncMessagingBackend`. The asynchronous one is
awaited natively; the blocking one is adapted with
:func:`~melange.backends.async_interfaces.as_async`, its calls running in worker threads so
they never block the event loop::

    dispatcher = AsyncMessageDispatcher(JsonSerializer(), backend=backend,
                                        consumers=[Consumer(on_message=handle_order)])
    await dispatcher.consume_loop("orders", concurrency=8)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from melange.backends.async_interfaces import AsyncMessagingBackend, as_async
from melange.backends.backend_manager import BackendManager
from melange.backends.interfaces import MessagingBackend
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.exceptions import DestinationNotFoundError, TopicNotFoundError
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.publishers import _Publisher
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry, SerializerSource

logger = logging.getLogger("melange.publishers")


class _Builder(_Publisher):
    """The synchronous publishers' message building (``_build``), without their backend."""

    def __init__(self, serializer_registry: SerializerSource | None) -> None:
        self.serializer_registry = SerializerRegistry.coerce(
            serializer_registry if serializer_registry is not None else JsonSerializer()
        )


class _AsyncPublisher:
    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | AsyncMessagingBackend | None = None,
    ) -> None:
        if isinstance(serializer_registry, MessagingBackend | AsyncMessagingBackend):
            raise TypeError(
                f"{type(self).__name__} takes the serializer(s) first and the backend second"
            )
        self._builder = _Builder(serializer_registry)
        self._given = backend if backend is not None else BackendManager().get_backend()
        self._backend = as_async(self._given)
        # Handles are looked up once per destination, as by the synchronous publishers.
        self._handles: dict[str, Any] = {}

    @property
    def serializer_registry(self) -> SerializerRegistry:
        """The serializers messages are encoded with."""
        return self._builder.serializer_registry

    @property
    def backend(self) -> MessagingBackend | AsyncMessagingBackend:
        """The backend messages are handed to, as it was given."""
        return self._given

    async def _lookup(self, name: str) -> Any:
        raise NotImplementedError

    async def _send(self, message: Message, handle: Any) -> None:
        raise NotImplementedError

    async def _send_batch(self, messages: list[Message], handle: Any) -> None:
        raise NotImplementedError

    async def _handle(self, name: str) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"destination name must be a str, got {type(name).__name__}")
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = await self._lookup(name)
        return handle

    async def publish(
        self,
        destination: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it; returns the envelope that was sent.

        Takes the same arguments as the synchronous publisher's ``publish``.
        """
        # Built here, in the caller's task, so the causation id is this task's message.
        message = self._builder._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        handle = await self._handle(destination)
        try:
            await self._send(message, handle)
        except DestinationNotFoundError:
            self._handles.pop(destination, None)  # deleted since it was looked up
            raise
        return message

    async def publish_batch(
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
            self._builder._build(item, message_group_id, None, headers, None, None)
            for item in items
        ]
        if messages:
            await self._send_batch(messages, await self._handle(destination))
        return messages


class AsyncQueuePublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.QueuePublisher` (same arguments);
    ``backend`` may also be an :class:`~melange.backends.async_interfaces.AsyncMessagingBackend`.
    """

    async def _lookup(self, name: str) -> QueueWrapper:
        return await self._backend.get_queue(name)

    async def _send(self, message: Message, handle: QueueWrapper) -> None:
        await self._backend.publish_to_queue(message, handle)

    async def _send_batch(self, messages: list[Message], handle: QueueWrapper) -> None:
        await self._backend.publish_batch_to_queue(messages, handle)


class AsyncTopicPublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.TopicPublisher` (same arguments,
    ``declare_topics`` included); ``backend`` may also be an
    :class:`~melange.backends.async_interfaces.AsyncMessagingBackend`.
    """

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | AsyncMessagingBackend | None = None,
        *,
        declare_topics: bool = True,
    ) -> None:
        super().__init__(serializer_registry, backend)
        self.declare_topics = declare_topics

    async def _lookup(self, name: str) -> TopicWrapper:
        try:
            return await self._backend.get_topic(name)
        except TopicNotFoundError:
            if not self.declare_topics:
                raise
        logger.warning(
            "topic %r did not exist and was created; pass declare_topics=False to the "
            "AsyncTopicPublisher to make this an error",
            name,
        )
        return await self._backend.declare_topic(name)

    async def _send(self, message: Message, handle: TopicWrapper) -> None:
        await self._backend.publish_to_topic(message, handle)

    async def _send_batch(self, messages: list[Message], handle: TopicWrapper) -> None:
        await self._backend.publish_batch_to_topic(messages, handle)


__all__ = ["AsyncMessageDispatcher", "AsyncQueuePublisher", "AsyncTopicPublisher"]
