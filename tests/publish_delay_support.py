"""The per-message delay (``publish(..., delay_seconds=...)``) checked the same way on every
backend, through the blocking and the asyncio publishers.

A backend's test module builds its backend and calls these scenarios; each one creates its own
uniquely named queues and topics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from melange import QueuePublisher, TopicPublisher
from melange.aio import AsyncQueuePublisher, AsyncTopicPublisher
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import ConfigurationError
from melange.models import Message, QueueWrapper
from melange.serializers import JsonSerializer

#: How the message is published: with the blocking publisher or the asyncio one.
PUBLISHERS = ("blocking", "asyncio")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def publish(
    how: str, backend: Any, destination: str, data: Any, topic: bool = False, **options: Any
) -> Message:
    """Publish ``data`` with the ``how`` publisher (``backend`` may be an asyncio one)."""
    if how == "blocking":
        sync_class = TopicPublisher if topic else QueuePublisher
        return sync_class(JsonSerializer(), backend).publish(destination, data, **options)
    async_class = AsyncTopicPublisher if topic else AsyncQueuePublisher

    async def run() -> Message:
        return await async_class(JsonSerializer(), backend).publish(destination, data, **options)

    return asyncio.run(run())


def receive_all(backend: MessagingBackend, queue: QueueWrapper, wait: float) -> list[Message]:
    """Receive (and acknowledge) what arrives within ``wait`` seconds, at least one poll."""
    got: list[Message] = []
    deadline = time.monotonic() + wait
    while True:
        batch = backend.retrieve_messages(queue, wait_seconds=min(1.0, wait), max_messages=10)
        for message in batch:
            backend.acknowledge(message)
        got.extend(batch)
        if got or time.monotonic() >= deadline:
            return got


def check_queue_delay(
    how: str,
    publish_backend: Any,
    backend: MessagingBackend,
    delay: float,
    early: float,
) -> None:
    """A message published with ``delay`` is not received for ``early`` seconds, then is."""
    queue, _ = backend.declare_queue(unique("delay-q"))
    try:
        started = time.monotonic()
        publish(how, publish_backend, queue.name, {"n": 1}, delay_seconds=delay)
        assert receive_all(backend, queue, early) == []
        got = receive_all(backend, queue, delay + 15)
        elapsed = time.monotonic() - started
        assert [m.content for m in got] == ['{"n": 1}']
        assert elapsed >= delay - 0.05
        # An undelayed message on the same queue is not held back.
        publish(how, publish_backend, queue.name, {"n": 2})
        assert [m.content for m in receive_all(backend, queue, 5)] == ['{"n": 2}']
    finally:
        backend.delete_queue(queue)


def check_topic_delay(
    how: str, publish_backend: Any, backend: MessagingBackend, delay: float, early: float
) -> None:
    """Every copy of a topic message published with ``delay`` is held back."""
    topic = backend.declare_topic(unique("delay-t"))
    first, _ = backend.declare_queue(unique("delay-a"), topic)
    second, _ = backend.declare_queue(unique("delay-b"), topic)
    try:
        publish(how, publish_backend, topic.name, {"n": 1}, topic=True, delay_seconds=delay)
        assert receive_all(backend, first, early) == []
        assert receive_all(backend, second, 0) == []
        assert [m.content for m in receive_all(backend, first, delay + 15)] == ['{"n": 1}']
        assert [m.content for m in receive_all(backend, second, 5)] == ['{"n": 1}']
    finally:
        backend.delete_queue(first)
        backend.delete_queue(second)
        backend.delete_topic(topic)


def check_invalid_delays_refused(how: str, publish_backend: Any, backend: MessagingBackend) -> None:
    """Delays that are not a finite number of seconds, at least 0, are refused before
    anything is sent."""
    queue, _ = backend.declare_queue(unique("delay-bad"))
    try:
        for bad in (float("nan"), float("inf"), -1, "5", True):
            with pytest.raises(ConfigurationError, match="delay_seconds"):
                publish(how, publish_backend, queue.name, {"n": 1}, delay_seconds=bad)
        assert receive_all(backend, queue, 0) == []
    finally:
        backend.delete_queue(queue)


def check_fifo_delay_refused(
    how: str, publish_backend: Any, backend: MessagingBackend, topics: bool = True
) -> None:
    """A per-message delay on a FIFO queue, directly or through a topic, is refused and
    nothing is stored."""
    fifo, _ = backend.declare_queue(unique("delay-f") + ".fifo")
    try:
        with pytest.raises(ConfigurationError, match="FIFO"):
            publish(
                how, publish_backend, fifo.name, {"n": 1}, message_group_id="g", delay_seconds=1
            )
        if topics:
            topic = backend.declare_topic(unique("delay-ft"))
            plain, _ = backend.declare_queue(unique("delay-p"), topic)
            backend.declare_queue(fifo.name, topic)
            try:
                with pytest.raises(ConfigurationError, match="FIFO"):
                    publish(
                        how,
                        publish_backend,
                        topic.name,
                        {"n": 1},
                        topic=True,
                        message_group_id="g",
                        delay_seconds=1,
                    )
                assert receive_all(backend, plain, 1.5) == []
            finally:
                backend.delete_queue(plain)
                backend.delete_topic(topic)
        assert receive_all(backend, fifo, 1.5) == []
    finally:
        backend.delete_queue(fifo)


def check_fifo_keywords_on_the_backend(backend: MessagingBackend) -> None:
    """``publish_to_queue(message, fifo_queue, message_group_id=..., message_deduplication_id=...)``
    (the 7.2.0 backend API) keeps the group and drops a repeated deduplication id."""
    queue, _ = backend.declare_queue(unique("kw") + ".fifo")
    try:
        for content, dedup in (("a", "1"), ("b", "2"), ("b-again", "2"), ("c", "3")):
            backend.publish_to_queue(
                Message.create(content, "text", 1),
                queue,
                message_group_id="group-1",
                message_deduplication_id=dedup,
            )
        got: list[Message] = []
        for _ in range(10):
            batch = receive_all(backend, queue, 1)
            got.extend(batch)
            if not batch:
                break
        assert [m.content for m in got] == ["a", "b", "c"]
        assert {m.group_id for m in got} == {"group-1"}
    finally:
        backend.delete_queue(queue)
