"""``publish(..., delay_seconds=...)`` on the embedded backends (in memory, SQLite), with the
blocking and the asyncio publishers; and its refusal where a backend cannot delay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from melange import QueuePublisher
from melange.aio import AsyncTopicPublisher
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import ConfigurationError
from melange.models import Message
from melange.serializers import JsonSerializer
from publish_delay_support import (
    PUBLISHERS,
    check_fifo_delay_refused,
    check_fifo_keywords_on_the_backend,
    check_invalid_delays_refused,
    check_queue_delay,
    check_topic_delay,
    publish,
    receive_all,
    unique,
)


@pytest.fixture
def backend(embedded_backend: MessagingBackend) -> MessagingBackend:
    return embedded_backend


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_delayed_queue_message_is_held_back_for_its_delay(
    backend: MessagingBackend, how: str
) -> None:
    check_queue_delay(how, backend, backend, delay=0.6, early=0.3)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_every_copy_of_a_delayed_topic_message_is_held_back(
    backend: MessagingBackend, how: str
) -> None:
    check_topic_delay(how, backend, backend, delay=0.6, early=0.3)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_delays_that_are_not_finite_non_negative_seconds_are_refused(
    backend: MessagingBackend, how: str
) -> None:
    check_invalid_delays_refused(how, backend, backend)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_delay_on_a_fifo_queue_is_refused_as_on_sqs(backend: MessagingBackend, how: str) -> None:
    check_fifo_delay_refused(how, backend, backend)


def test_the_message_delay_replaces_the_queue_delay(backend: MessagingBackend) -> None:
    queue, _ = backend.declare_queue(unique("qdelay"), delay_seconds=30)
    try:
        publish("blocking", backend, queue.name, {"n": 1}, delay_seconds=0.2)
        assert [m.content for m in receive_all(backend, queue, 5)] == ['{"n": 1}']
    finally:
        backend.delete_queue(queue)


def test_a_delayed_backend_level_publish_reaches_the_queue_later(backend: MessagingBackend) -> None:
    queue, _ = backend.declare_queue(unique("direct"))
    try:
        backend.publish_to_queue(Message.create("x", "text", 1), queue, delay_seconds=0.3)
        assert receive_all(backend, queue, 0) == []
        assert [m.content for m in receive_all(backend, queue, 5)] == ["x"]
    finally:
        backend.delete_queue(queue)


def test_fifo_keywords_passed_to_the_backend_are_honoured(backend: MessagingBackend) -> None:
    check_fifo_keywords_on_the_backend(backend)


def test_embedded_backends_say_they_can_delay(backend: MessagingBackend) -> None:
    capabilities = backend.capabilities
    assert capabilities.delayed_publish and capabilities.delayed_topic_publish
    assert capabilities.max_publish_delay is None


class NoDelays(InMemoryMessagingBackend):
    """A backend whose capabilities say it cannot delay (as a third-party one by default)."""

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(name="nodelay", persistent=False, fifo=False)

    def publish_to_queue(self, message: Message, queue: Any, **kwargs: Any) -> None:
        raise AssertionError("a refused delay must not reach the backend")

    def publish_to_topic(self, message: Message, topic: Any, **kwargs: Any) -> None:
        raise AssertionError("a refused delay must not reach the backend")


def test_publishers_refuse_a_delay_the_backend_cannot_honour_before_sending() -> None:
    backend = NoDelays()
    backend.declare_queue("orders")
    backend.declare_topic("events")

    with pytest.raises(ConfigurationError, match="nodelay backend cannot delay a message"):
        QueuePublisher(JsonSerializer(), backend).publish("orders", {"n": 1}, delay_seconds=5)

    async def topic_publish() -> None:
        await AsyncTopicPublisher(JsonSerializer(), backend).publish(
            "events", {"n": 1}, delay_seconds=5
        )

    with pytest.raises(ConfigurationError, match="cannot delay a topic message"):
        asyncio.run(topic_publish())


def test_a_delay_of_zero_is_no_delay_on_any_backend() -> None:
    class Recording(NoDelays):
        def publish_to_queue(self, message: Message, queue: Any, **kwargs: Any) -> None:
            self.options = kwargs

    backend = Recording()
    backend.declare_queue("orders")

    QueuePublisher(JsonSerializer(), backend).publish("orders", {"n": 1}, delay_seconds=0)

    assert backend.options == {}
