"""The original documentation's examples, with the broker swapped for RabbitMQ.

Each test follows one snippet (typos of the snippets fixed); queue and topic names get a
unique suffix so that runs on a shared broker do not meet, and are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqs.backend_manager import BackendManager
from melange.consumers import SimpleMessageDispatcher, SingleDispatchConsumer, listener
from melange.message_publisher import QueuePublisher, TopicPublisher
from melange.serializers.pickle import PickleSerializer

pytestmark = pytest.mark.rabbitmq


class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message


class MyConsumer(SingleDispatchConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.printed: list[str] = []

    @listener
    def on_my_test_message_received(self, event: MyTestMessage) -> None:
        self.printed.append(event.message)


@pytest.fixture
def names(rabbit: RabbitMQBackend) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    chosen = {
        "queue": f"melangetutorial-queue-{suffix}",
        "topic": f"melangetutorial-topic-{suffix}",
    }
    yield chosen
    factory = MessagingBackendFactory(rabbit)
    for delete, name in (
        (factory.delete_queue, chosen["queue"]),
        (factory.delete_topic, chosen["topic"]),
    ):
        with contextlib.suppress(Exception):  # not every test creates both
            delete(name)


def consume_until(
    dispatcher: SimpleMessageDispatcher, queue: str, done: Callable[[], bool]
) -> None:
    """Run the example's consume_loop in a thread and stop it once ``done()``."""
    thread = threading.Thread(
        target=dispatcher.consume_loop, args=(queue,), kwargs={"install_signal_handlers": False}
    )
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_tutorial_create_publish_consume(rabbit: RabbitMQBackend, names: dict[str, str]) -> None:
    backend = rabbit
    # create_queue.py
    factory = MessagingBackendFactory(backend)
    factory.init_queue(names["queue"])

    # publish_example.py
    serializer = PickleSerializer()
    publisher = QueuePublisher(serializer, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish(names["queue"], message)

    # consumer-example.py (the dispatcher takes the consumer first)
    consumer = MyConsumer()
    consumer_handler = SimpleMessageDispatcher(consumer, serializer, backend=backend)
    consume_until(consumer_handler, names["queue"], lambda: bool(consumer.printed))
    assert consumer.printed == ["Hello World!"]
    assert consumer_handler.stats.acknowledged == 1


def test_publishing_to_a_topic_reaches_every_subscribed_queue(
    rabbit: RabbitMQBackend, names: dict[str, str]
) -> None:
    backend = rabbit
    factory = MessagingBackendFactory(backend)
    factory.init_topic(names["topic"])
    second = f"{names['queue']}-second"
    factory.init_queue(names["queue"], names["topic"])
    factory.init_queue(second, [names["topic"]])  # the 7.2.0 call style
    try:
        serializer = PickleSerializer()
        publisher = TopicPublisher(serializer, backend)
        publisher.publish(names["topic"], MyTestMessage("Hello World!"))
        for queue in (names["queue"], second):
            consumer = MyConsumer()
            dispatcher = SimpleMessageDispatcher(consumer, serializer, backend=backend)
            consume_until(dispatcher, queue, lambda c=consumer: bool(c.printed))  # type: ignore[misc]
            assert consumer.printed == ["Hello World!"]
    finally:
        factory.delete_queue(second)


def test_default_backend_from_the_backend_manager(
    rabbit: RabbitMQBackend, names: dict[str, str]
) -> None:
    BackendManager().use_backend(rabbit)
    MessagingBackendFactory().init_queue(
        names["queue"], dead_letter_queue_name=f"{names['queue']}-dlq"
    )
    try:
        QueuePublisher(PickleSerializer()).publish(names["queue"], MyTestMessage("default"))
        consumer = MyConsumer()
        dispatcher = SimpleMessageDispatcher(consumer, PickleSerializer())
        consume_until(dispatcher, names["queue"], lambda: bool(consumer.printed))
        assert consumer.printed == ["default"]
    finally:
        MessagingBackendFactory(rabbit).delete_queue(f"{names['queue']}-dlq")
