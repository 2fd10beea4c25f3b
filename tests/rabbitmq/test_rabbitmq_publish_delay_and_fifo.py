"""RabbitMQ: the per-message delay (held in the retry queues the backend uses for delayed
retries, and in a delay queue per topic), and FIFO requests refused up front rather than
silently delivered without per-group order or deduplication."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from melange.aio import AsyncQueuePublisher, AsyncTopicPublisher
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq.async_backend import AsyncRabbitMQBackend
from melange.backends.rabbitmq.topology import (
    DELAY_LADDER_MS,
    publish_delay_ms,
    topic_delay_queue_name,
)
from melange.exceptions import ConfigurationError, QueueNotFoundError
from melange.models import Message
from melange.serializers import JsonSerializer
from publish_delay_support import (
    PUBLISHERS,
    check_invalid_delays_refused,
    check_queue_delay,
    check_topic_delay,
    publish,
    receive_all,
    unique,
)

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def make_async(
    rabbit_address: tuple[str, int], connection_name: str
) -> Callable[[], AsyncRabbitMQBackend]:
    host, port = rabbit_address
    return lambda: AsyncRabbitMQBackend(host=host, port=port, connection_name=connection_name)


def test_a_publish_delay_rounds_up_to_the_retry_ladder_never_down() -> None:
    assert publish_delay_ms(0.05) == 100
    assert publish_delay_ms(1) == 1_000
    assert publish_delay_ms(7) == 10_000
    assert publish_delay_ms(900) == 900_000
    assert publish_delay_ms(3_601) == 7_200_000
    for delay in (0.001, 0.4, 2.5, 45, 1_000, 5_000):
        assert publish_delay_ms(delay) >= delay * 1000
        assert (
            publish_delay_ms(delay) in DELAY_LADDER_MS or publish_delay_ms(delay) % 3_600_000 == 0
        )


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_delayed_queue_message_is_held_back_on_rabbitmq(
    rabbit: RabbitMQBackend, how: str
) -> None:
    check_queue_delay(how, rabbit, rabbit, delay=1, early=0.6)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_every_copy_of_a_delayed_topic_message_is_held_back_on_rabbitmq(
    rabbit: RabbitMQBackend, how: str
) -> None:
    check_topic_delay(how, rabbit, rabbit, delay=1, early=0.6)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_invalid_delays_are_refused_on_rabbitmq(rabbit: RabbitMQBackend, how: str) -> None:
    check_invalid_delays_refused(how, rabbit, rabbit)


def test_the_asyncio_backend_delays_queue_and_topic_messages(
    rabbit: RabbitMQBackend, make_async: Callable[[], AsyncRabbitMQBackend]
) -> None:
    topic = rabbit.declare_topic(unique("adelay-t"))
    subscribed, _ = rabbit.declare_queue(unique("adelay-s"), topic)
    queue, _ = rabbit.declare_queue(unique("adelay-q"))
    try:

        async def scenario() -> None:
            backend = make_async()
            try:
                await AsyncQueuePublisher(JsonSerializer(), backend).publish(
                    queue.name, {"to": "queue"}, delay_seconds=1
                )
                await AsyncTopicPublisher(JsonSerializer(), backend).publish(
                    topic.name, {"to": "topic"}, delay_seconds=1
                )
            finally:
                await backend.aclose()

        started = time.monotonic()
        asyncio.run(scenario())
        assert receive_all(rabbit, queue, 0.5) == []
        assert receive_all(rabbit, subscribed, 0) == []
        assert [m.content for m in receive_all(rabbit, queue, 10)] == ['{"to": "queue"}']
        assert [m.content for m in receive_all(rabbit, subscribed, 10)] == ['{"to": "topic"}']
        assert time.monotonic() - started >= 0.95
    finally:
        rabbit.delete_queue(queue)
        rabbit.delete_queue(subscribed)
        rabbit.delete_topic(topic)


def test_a_delayed_publish_to_a_missing_queue_raises_queue_not_found(
    rabbit: RabbitMQBackend,
) -> None:
    from melange.models import QueueWrapper

    missing = QueueWrapper(unique("missing"), None)
    with pytest.raises(QueueNotFoundError):
        rabbit.publish_to_queue(Message.create("x", "text", 1), missing, delay_seconds=1)


def test_deleting_a_topic_deletes_its_delay_queues(rabbit: RabbitMQBackend) -> None:
    topic = rabbit.declare_topic(unique("tdel"))
    queue, _ = rabbit.declare_queue(unique("tdel-q"), topic)
    try:
        publish("blocking", rabbit, topic.name, {"n": 1}, topic=True, delay_seconds=30)
        holder = topic_delay_queue_name(topic.name, 30_000)
        assert rabbit._steps(_exists(holder))
        rabbit.delete_topic(topic)
        assert not rabbit._steps(_exists(holder))
    finally:
        rabbit.delete_queue(queue)


def _exists(name: str):  # type: ignore[no-untyped-def]
    from melange.backends.rabbitmq.topology import DeclareQueue, exists_steps

    return exists_steps(DeclareQueue(name, passive=True))


def test_capabilities_say_rabbitmq_delays_but_has_no_fifo(
    rabbit: RabbitMQBackend, make_async: Callable[[], AsyncRabbitMQBackend]
) -> None:
    for capabilities in (rabbit.capabilities, make_async().capabilities):
        assert capabilities.delayed_publish and capabilities.delayed_topic_publish
        assert not capabilities.fifo


# -- FIFO: refused, never silently ignored ---------------------------------------------------------


def test_a_fifo_queue_name_is_refused_when_declared(rabbit: RabbitMQBackend) -> None:
    with pytest.raises(ConfigurationError, match="no FIFO queues"):
        rabbit.declare_queue(unique("orders") + ".fifo")


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_group_or_deduplication_id_is_refused_before_publishing(
    rabbit: RabbitMQBackend, how: str
) -> None:
    queue, _ = rabbit.declare_queue(unique("nofifo"))
    try:
        with pytest.raises(ConfigurationError, match="refuses message_group_id"):
            publish(how, rabbit, queue.name, {"n": 1}, message_group_id="g")
        with pytest.raises(ConfigurationError, match="refuses message_deduplication_id"):
            publish(how, rabbit, queue.name, {"n": 1}, message_deduplication_id="d")
        with pytest.raises(ConfigurationError, match="no FIFO queues"):
            rabbit.publish_to_queue(
                Message.create("x", "text", 1),
                queue,
                message_group_id="g",
                message_deduplication_id="d",
            )
        assert receive_all(rabbit, queue, 0.5) == []
        # Without them, the same publish goes through.
        publish(how, rabbit, queue.name, {"n": 2})
        assert [m.content for m in receive_all(rabbit, queue, 5)] == ['{"n": 2}']
    finally:
        rabbit.delete_queue(queue)


def test_a_topic_publish_with_a_group_id_is_refused(rabbit: RabbitMQBackend) -> None:
    topic = rabbit.declare_topic(unique("nofifo-t"))
    try:
        with pytest.raises(ConfigurationError, match="refuses message_group_id"):
            publish("blocking", rabbit, topic.name, {"n": 1}, topic=True, message_group_id="g")
    finally:
        rabbit.delete_topic(topic)


def test_the_asyncio_backend_refuses_fifo_requests_too(
    make_async: Callable[[], AsyncRabbitMQBackend], rabbit: RabbitMQBackend
) -> None:
    queue, _ = rabbit.declare_queue(unique("anofifo"))

    async def scenario() -> None:
        backend = make_async()
        try:
            with pytest.raises(ConfigurationError, match="no FIFO queues"):
                await backend.declare_queue(unique("a") + ".fifo")
            with pytest.raises(ConfigurationError, match="refuses message_group_id"):
                await AsyncQueuePublisher(JsonSerializer(), backend).publish(
                    queue.name, {"n": 1}, message_group_id="g"
                )
        finally:
            await backend.aclose()

    try:
        asyncio.run(scenario())
    finally:
        rabbit.delete_queue(queue)
