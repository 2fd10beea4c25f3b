"""The streams and consumers of a NATS backend on the server: :class:`Streams`.

It creates, finds and deletes the streams of queues and topics and the durable consumer of
each queue, laid out as :mod:`melange.backends.nats.topology` says, and remembers the
settings of the queues it met (their streams' descriptions) and the topics known to exist.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from melange.backends.nats.session import Session
from melange.backends.nats.topology import (
    Names,
    QueueOptions,
    QueueSettings,
    consumer_config,
    source_filters,
)
from melange.exceptions import BackendError, QueueNotFoundError, TopicNotFoundError
from melange.models import QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.nats")

#: JetStream's error code for "stream name already in use" (with another configuration).
_STREAM_EXISTS = 10058


class Streams:
    """Declares, finds and deletes a backend's streams, and caches what it learnt of them.

    Args:
        session: The backend's connection.
        names: The stream names and subjects of the backend's prefix.
        storage: ``"file"`` or ``"memory"``.
        duplicate_window: Seconds a queue stream remembers a ``Nats-Msg-Id``.
        topic_max_age: Seconds a topic stream keeps its messages.
    """

    def __init__(
        self,
        session: Session,
        names: Names,
        *,
        storage: str,
        duplicate_window: float,
        topic_max_age: float,
    ) -> None:
        self._session = session
        self._names = names
        self._storage = storage
        self._duplicate_window = duplicate_window
        self._topic_max_age = topic_max_age
        self._settings: dict[str, QueueSettings] = {}
        self._known_topics: set[str] = set()

    async def stream_info(self, stream: str) -> Any | None:
        """The stream's information, or ``None`` when it does not exist."""

        async def op(_nc: Client) -> Any:
            try:
                return await self._session.js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return None

        return await self._session.run(op)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the topic's stream (idempotent)."""
        stream = self._names.topic_stream(topic_name)
        config = api.StreamConfig(
            name=stream,
            subjects=[self._names.topic_subjects(topic_name)],
            retention=api.RetentionPolicy.LIMITS,
            max_age=self._topic_max_age,
            storage=api.StorageType(self._storage),
            duplicate_window=self._duplicate_window,
        )
        await self._ensure_stream(config)
        self._known_topics.add(topic_name)
        return TopicWrapper(stream, topic_name)

    async def _ensure_stream(self, config: Any) -> None:
        session = self._session

        async def op(_nc: Client) -> None:
            try:
                await session.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_EXISTS:
                    raise BackendError(
                        f"NATS at {session.describe} refused stream {config.name}: "
                        f"{exc.description}"
                    ) from None
                await session.js.update_stream(config)

        await session.run(op)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        """The topic, once its stream was found (``TopicNotFoundError`` if there is none)."""
        stream = self._names.topic_stream(topic_name)
        if topic_name not in self._known_topics:
            if await self.stream_info(stream) is None:
                raise TopicNotFoundError(topic_name)
            self._known_topics.add(topic_name)
        return TopicWrapper(stream, topic_name)

    def forget_topic(self, topic_name: str) -> None:
        """Look for the topic's stream again next time (it was found missing)."""
        self._known_topics.discard(topic_name)

    async def queue_settings(self, queue_name: str, fresh: bool = False) -> QueueSettings:
        """The queue's settings, read from its stream once (again when ``fresh``)."""
        settings = self._settings.get(queue_name)
        if settings is None or fresh:
            info = await self.stream_info(self._names.queue_stream(queue_name))
            if info is None:
                self._settings.pop(queue_name, None)
                raise QueueNotFoundError(queue_name)
            settings = QueueSettings.read(queue_name, info.config.description)
            self._settings[queue_name] = settings
        return settings

    def known_settings(self, queue_name: str) -> QueueSettings | None:
        """The queue's settings if they were read already, without asking the server."""
        return self._settings.get(queue_name)

    def forget_queue(self, queue_name: str) -> None:
        """Read the queue's settings again next time (it was found missing)."""
        self._settings.pop(queue_name, None)

    async def declare_queue(
        self,
        queue_name: str,
        topics_to_bind: Sequence[TopicWrapper],
        dead_letter_queue_name: str | None,
        options: QueueOptions,
    ) -> QueueWrapper:
        """Create the queue's stream and consumer (idempotent) and subscribe it to topics
        (its dead-letter queue, if any, declared already)."""
        stream = self._names.queue_stream(queue_name)
        existing = await self.stream_info(stream)
        sources: dict[tuple[str, str | None], Any] = {}
        filters: dict[str, tuple[str, ...]] = {}
        if existing is not None:
            for source in existing.config.sources or ():
                sources[(source.name, source.filter_subject)] = source
            filters.update(QueueSettings.read(queue_name, existing.config.description).filters)
        for topic in topics_to_bind:
            await self._bind(topic.name, options, sources, filters)
        settings = QueueSettings(
            queue=queue_name,
            dead_letter_queue=dead_letter_queue_name,
            max_receive_count=options.max_receive_count,
            visibility_timeout=options.visibility_timeout,
            fifo=options.fifo,
            filters=filters,
        )
        config = api.StreamConfig(
            name=stream,
            description=settings.describe(),
            subjects=[self._names.queue_subject(queue_name)],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType(self._storage),
            duplicate_window=self._duplicate_window,
            sources=list(sources.values()) or None,
        )
        await self._ensure_stream(config)
        await self._ensure_consumer(stream, options, dead_letter_queue_name is not None)
        self._settings[queue_name] = settings
        return QueueWrapper(stream, queue_name)

    async def _bind(
        self,
        topic: str,
        options: QueueOptions,
        sources: dict[tuple[str, str | None], Any],
        filters: dict[str, tuple[str, ...]],
    ) -> None:
        """Add the source copying ``topic``'s messages into the queue (from now on)."""
        topic_stream = self._names.topic_stream(topic)
        subject = source_filters(self._names, topic, options.filter_events)
        for key in [k for k in sources if k[0] == topic_stream and k[1] != subject]:
            del sources[key]  # subscribed before with another filter: that one goes
        filters[topic] = options.filter_events
        if (topic_stream, subject) in sources:
            return  # already subscribed: its source keeps its place in the topic
        info = await self.stream_info(topic_stream)
        if info is None:
            raise TopicNotFoundError(topic)
        sources[(topic_stream, subject)] = api.StreamSource(
            name=topic_stream, filter_subject=subject, opt_start_seq=info.state.last_seq + 1
        )

    async def _ensure_consumer(self, stream: str, options: QueueOptions, has_dlq: bool) -> None:
        config = api.ConsumerConfig(**consumer_config(options, has_dlq))

        async def op(_nc: Client) -> None:
            try:
                await self._session.js.add_consumer(stream, config)
            except nats.js.errors.BadRequestError as exc:
                # An existing consumer whose settings cannot change (the server keeps them).
                logger.warning(
                    "NATS kept the consumer of %s as it was: %s", stream, exc.description
                )

        await self._session.run(op)

    async def delete_queue(self, queue_name: str) -> None:
        """Delete the queue's stream, its messages and its consumer."""
        stream = self._names.queue_stream(queue_name)

        async def op(_nc: Client) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._session.js.delete_stream(stream)

        await self._session.run(op)
        self._settings.pop(queue_name, None)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic's stream and the queues' sources on it."""
        topic_stream = self._names.topic_stream(topic.name)
        for stream in await self.stream_names(f"{self._names.prefix}_q_"):
            info = await self.stream_info(stream)
            if info is None or not any(s.name == topic_stream for s in info.config.sources or ()):
                continue
            config = info.config
            config.sources = [s for s in config.sources if s.name != topic_stream] or None
            await self._ensure_stream(config)

        async def op(_nc: Client) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._session.js.delete_stream(topic_stream)

        await self._session.run(op)
        self._known_topics.discard(topic.name)

    async def stream_names(self, start: str) -> list[str]:
        """The names of the streams that start with ``start``."""

        async def op(nc: Client) -> list[str]:
            names: list[str] = []
            offset = 0
            while True:
                answer = await self._session.api(nc, "STREAM.NAMES", {"offset": offset})
                page = answer.get("streams") or []
                names.extend(n for n in page if n.startswith(start))
                offset += len(page)
                if not page or offset >= int(answer.get("total", 0)):
                    return names

        return await self._session.run(op)


__all__ = ["Streams"]
