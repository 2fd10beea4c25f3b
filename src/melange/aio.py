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

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from melange.backends.async_interfaces import AsyncMessagingBackend, as_async
from melange.backends.backend_manager import BackendManager
from melange.backends.duck_typed import as_backend
from melange.backends.interfaces import MessagingBackend
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.publish_middleware import DestinationKind, PublishMiddleware
from melange.publishers import (
    _NO_OPTIONS,
    Destinations,
    LookUp,
    PublishEffect,
    PublishStep,
    QueuePublisher,
    Send,
    SendBatch,
    TopicPublisher,
    _coerce_serializers,
    _Envelopes,
)
from melange.serializers.registry import SerializerSource

if TYPE_CHECKING:
    from melange.claimcheck import ClaimCheck

T = TypeVar("T")


class _AsyncPublisher(_Envelopes):
    #: The name the warning about a created topic gives the publisher.
    _publisher_name = "publisher"
    #: The methods a backend that is not a MessagingBackend needs (as for the blocking twin).
    _needs: tuple[str, ...] = QueuePublisher._needs
    _backend: AsyncMessagingBackend

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | AsyncMessagingBackend | None = None,
        *,
        middleware: Sequence[PublishMiddleware] = (),
        claim_check: ClaimCheck | None = None,
    ) -> None:
        if isinstance(serializer_registry, MessagingBackend | AsyncMessagingBackend):
            raise TypeError(
                f"{type(self).__name__} takes the serializer(s) first and the backend second"
            )
        self.serializer_registry = _coerce_serializers(serializer_registry)
        given = backend if backend is not None else BackendManager().get_backend()
        if not isinstance(given, MessagingBackend | AsyncMessagingBackend):
            # A 7.2.0-style duck-typed blocking backend (or a test double of one).
            given = as_backend(given, self._needs, type(self).__name__)
        self._given: MessagingBackend | AsyncMessagingBackend = given
        self._backend = as_async(self._given)
        # The synchronous publishers' destination rules, performed by awaiting.
        kind: DestinationKind = "topic" if self._to_topics else "queue"
        self._destinations = Destinations(self._publisher_name, middleware, kind)
        self.claim_check = claim_check

    async def _checked(self, message: Message) -> Message:
        """As the blocking publishers' ``_checked``; the payload store is written from a
        worker thread."""
        claim_check = self.claim_check
        if claim_check is None or not claim_check.wants(message, self._backend.capabilities):
            return message
        return await asyncio.to_thread(claim_check.check_in, message, self._to_topics)

    @property
    def backend(self) -> MessagingBackend | AsyncMessagingBackend:
        """The backend messages are handed to, as it was given."""
        return self._given

    @property
    def _create_topic(self) -> bool:
        """Whether a missing topic is created rather than an error."""
        return False

    async def _lookup(self, name: str) -> Any:
        raise NotImplementedError

    async def _declare(self, name: str) -> Any:
        raise NotImplementedError

    async def _send(self, message: Message, handle: Any, options: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def _send_batch(self, messages: list[Message], handle: Any) -> None:
        raise NotImplementedError

    async def _perform(self, effect: PublishEffect) -> Any:
        if isinstance(effect, Send):
            return await self._send(effect.message, effect.handle, effect.options)
        if isinstance(effect, LookUp):
            return await self._lookup(effect.name)
        if isinstance(effect, SendBatch):
            return await self._send_batch(effect.messages, effect.handle)
        return await self._declare(effect.name)

    async def _run(self, step: PublishStep[T]) -> T:
        """Drive ``step`` to its end, awaiting each effect."""
        try:
            effect = next(step)
            while True:
                try:
                    result = await self._perform(effect)
                except BaseException as exc:
                    effect = step.throw(exc)
                else:
                    effect = step.send(result)
        except StopIteration as done:
            value: T = done.value
            return value

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
        delay_seconds: float | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it; returns the envelope that was sent.

        Takes the same arguments as the synchronous publisher's ``publish``, ``delay_seconds``
        included.
        """
        options = self._delay(delay_seconds) if delay_seconds is not None else None
        # Built here, in the caller's task, so the causation id is this task's message.
        message = self._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        if self.claim_check is not None:
            message = await self._checked(message)
        destinations = self._destinations
        handle = destinations.direct(destination) if isinstance(destination, str) else None
        if handle is None:
            step = destinations.publish(destination, message, self._create_topic, options, data)
            return await self._run(step)
        # The handle is known: the steps of Destinations.publish, as the blocking publishers
        # take them, without driving a generator for each message.
        try:
            await self._send(message, handle, options or _NO_OPTIONS)
        except Exception as exc:
            destinations.failed(destination, exc)
            raise
        destinations.sent(destination, message, data, options)
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
        payloads = list(items)
        messages = [
            await self._checked(self._build(item, message_group_id, None, headers, None, None))
            for item in payloads
        ]
        step = self._destinations.publish_batch(destination, messages, self._create_topic, payloads)
        return await self._run(step)


class AsyncQueuePublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.QueuePublisher` (same arguments);
    ``backend`` may also be an :class:`~melange.backends.async_interfaces.AsyncMessagingBackend`.
    """

    async def _lookup(self, name: str) -> QueueWrapper:
        return await self._backend.get_queue(name)

    async def _send(
        self, message: Message, handle: QueueWrapper, options: Mapping[str, Any]
    ) -> None:
        await self._backend.publish_to_queue(message, handle, **options)

    async def _send_batch(self, messages: list[Message], handle: QueueWrapper) -> None:
        await self._backend.publish_batch_to_queue(messages, handle)


class AsyncTopicPublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.TopicPublisher` (same arguments,
    ``declare_topics`` included); ``backend`` may also be an
    :class:`~melange.backends.async_interfaces.AsyncMessagingBackend`.
    """

    _publisher_name = "AsyncTopicPublisher"
    _needs = TopicPublisher._needs
    _to_topics = True

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | AsyncMessagingBackend | None = None,
        *,
        declare_topics: bool = True,
        middleware: Sequence[PublishMiddleware] = (),
        claim_check: ClaimCheck | None = None,
    ) -> None:
        super().__init__(
            serializer_registry, backend, middleware=middleware, claim_check=claim_check
        )
        self.declare_topics = declare_topics

    @property
    def _create_topic(self) -> bool:
        return self.declare_topics

    async def _lookup(self, name: str) -> TopicWrapper:
        return await self._backend.get_topic(name)

    async def _declare(self, name: str) -> TopicWrapper:
        return await self._backend.declare_topic(name)

    async def _send(
        self, message: Message, handle: TopicWrapper, options: Mapping[str, Any]
    ) -> None:
        await self._backend.publish_to_topic(message, handle, **options)

    async def _send_batch(self, messages: list[Message], handle: TopicWrapper) -> None:
        await self._backend.publish_batch_to_topic(messages, handle)


__all__ = ["AsyncMessageDispatcher", "AsyncQueuePublisher", "AsyncTopicPublisher"]
