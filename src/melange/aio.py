"""The asyncio API: publishers and a dispatcher for ``async`` services.

The dispatcher is the same engine as the threaded one (see :mod:`melange.dispatch.aio`).
Consumers may be ``async``: a consumer whose ``on_message`` (or ``@consumer`` method, or
``process``) is a coroutine function is awaited; plain ones run on worker threads. Backend and
cache calls run in worker threads (``asyncio.to_thread``) so they never block the event loop::

    dispatcher = AsyncMessageDispatcher(JsonSerializer(), backend=backend,
                                        consumers=[Consumer(on_message=handle_order)])
    await dispatcher.consume_loop("orders", concurrency=8)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from melange.dispatch.aio import AsyncMessageDispatcher
from melange.models import Message
from melange.publishers import QueuePublisher, TopicPublisher


class _AsyncPublisher:
    _sync: QueuePublisher | TopicPublisher

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
        """Serialize ``data`` and publish it; returns the envelope that was sent."""
        # Built here, in the caller's task, so the causation id is this task's message.
        message = self._sync._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        return await asyncio.to_thread(self._sync._publish, destination, message)

    async def publish_batch(
        self, destination: str, items: Iterable[Any], **kwargs: Any
    ) -> list[Message]:
        """Publish several messages in as few broker calls as the backend allows."""
        return await asyncio.to_thread(self._sync.publish_batch, destination, list(items), **kwargs)


class AsyncQueuePublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.QueuePublisher` (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync = QueuePublisher(*args, **kwargs)


class AsyncTopicPublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.TopicPublisher` (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync = TopicPublisher(*args, **kwargs)


__all__ = ["AsyncMessageDispatcher", "AsyncQueuePublisher", "AsyncTopicPublisher"]
