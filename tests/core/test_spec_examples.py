"""The original documentation's examples, run with the broker swapped for the in-memory backend.

Each test follows one snippet of the spec line by line (typos fixed, noted where they are);
the SQS variants of the same snippets run against an SQS server in ``tests/sqs``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import polling
from hamcrest import assert_that, is_

from melange.backends.backend_manager import BackendManager as ReleasedBackendManager
from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend_manager import BackendManager
from melange.backends.testing import InMemoryMessagingBackend, link_synchronously
from melange.consumers import (
    Consumer,
    ConsumerHandler,
    SimpleMessageDispatcher,
    SingleDispatchConsumer,
    listener,
)
from melange.examples.doc_examples.probe import Probe
from melange.message_publisher import QueuePublisher, TopicPublisher
from melange.serializers.interfaces import MessageSerializer
from melange.serializers.pickle import PickleSerializer
from melange.testing import wait_until


class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message


def make_backend() -> InMemoryMessagingBackend:
    backend = InMemoryMessagingBackend()
    # The tutorial's create_queue.py step.
    factory = MessagingBackendFactory(backend)
    factory.init_queue("melangetutorial-queue")
    return backend


def test_tutorial_create_publish_consume(capsys: Any) -> None:
    backend = make_backend()

    # publish_example.py
    serializer = PickleSerializer()
    publisher = QueuePublisher(serializer, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")

    # consumer-example.py (typos fixed: the dispatcher takes the consumer, and the loop is
    # started on it; here it runs in a thread and is stopped once the message is printed).
    class MyConsumer(SingleDispatchConsumer):
        @listener
        def on_my_test_message_received(self, event: MyTestMessage) -> None:
            print(event.message)

    consumer = MyConsumer()
    consumer_handler = SimpleMessageDispatcher(consumer, serializer, backend=backend)
    print("Consuming...")
    thread = threading.Thread(
        target=consumer_handler.consume_loop, args=("melangetutorial-queue",), daemon=True
    )
    thread.start()
    wait_until(
        lambda: (
            "Hello World!" in capsys.readouterr().out
            or backend.queue_depth("melangetutorial-queue") == 0
        ),
        timeout=10,
    )
    consumer_handler.stop()
    thread.join(5)
    assert backend.queue_depth("melangetutorial-queue") == 0


def test_consumer_handler_alias_dispatches_like_the_released_dispatcher() -> None:
    backend = make_backend()
    got: list[Any] = []
    handler = ConsumerHandler(PickleSerializer(), backend=backend, consumers=[Consumer(got.append)])
    QueuePublisher(PickleSerializer(), backend).publish("melangetutorial-queue", {"a": 1})
    handler.consume_event("melangetutorial-queue")
    assert got == [{"a": 1}]


def test_publishers_page_queue_and_topic(capsys: Any) -> None:
    backend = make_backend()
    MessagingBackendFactory(backend).init_queue("topic-subscriber", "melangetutorial-topic")
    serializer = PickleSerializer()

    publisher = QueuePublisher(serializer, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")

    topic_publisher = TopicPublisher(serializer, backend)
    topic_publisher.publish("melangetutorial-topic", message)
    print("Message sent successfully!")

    assert capsys.readouterr().out.count("Message sent successfully!") == 2
    [queued] = backend.peek("melangetutorial-queue")
    [fanned] = backend.peek("topic-subscriber")
    assert queued.manifest == fanned.manifest == "MyTestMessage"
    assert serializer.deserialize(fanned.content).message == "Hello World!"


def test_advanced_topics_backend_manager() -> None:
    backend = make_backend()
    serializer = PickleSerializer()
    BackendManager().use_backend(backend)

    publisher = QueuePublisher(serializer)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)

    assert ReleasedBackendManager().get_default_backend() is backend
    assert backend.queue_depth("melangetutorial-queue") == 1


def test_behind_the_scenes_manifest_with_a_custom_serializer() -> None:
    @dataclass
    class ProductCreated:
        id: int
        name: str

    class MyCryptographicSerializer(MessageSerializer[ProductCreated]):
        def identifier(self) -> int:
            return 50

        def manifest(self, data: ProductCreated) -> str:
            return f"mycryptoserializer:sha1:{type(data).__name__}"

        def serialize(self, data: ProductCreated) -> str:
            plain = f"{data.id}|{data.name}"
            return plain[::-1] + "|" + hashlib.sha1(plain.encode()).hexdigest()

        def deserialize(self, data: str, manifest: str | None = None) -> ProductCreated:
            reversed_plain, _, digest = data.rpartition("|")
            plain = reversed_plain[::-1]
            assert hashlib.sha1(plain.encode()).hexdigest() == digest
            ident, name = plain.split("|")
            return ProductCreated(int(ident), name)

    event = ProductCreated(1, "Banana")
    serializer = MyCryptographicSerializer()
    serialized_event = serializer.serialize(event)
    manifest = serializer.manifest(event)
    assert manifest == "mycryptoserializer:sha1:ProductCreated"
    assert "Banana" not in serialized_event

    # The manifest travels with the message and reaches the consumer's serializer.
    backend = InMemoryMessagingBackend()
    got: list[Any] = []
    link_synchronously("products", [Consumer(got.append)], serializer, backend)
    QueuePublisher(serializer, backend).publish("products", event)
    assert got == [event]
    assert backend.peek("products") == []


def test_factory_page_examples() -> None:
    backend = InMemoryMessagingBackend()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("payment-updates.fifo")
    # The page names the queue as its own dead-letter queue; a distinct name is meant.
    factory.init_queue("payment-updates.fifo", dead_letter_queue_name="payment-updates-dlq.fifo")
    factory.init_topic("my-topic")
    factory.init_queue(
        "payment-updates.fifo",
        "my-topic-1",
        "my-topic-2",
        "my-topic-3",
        dead_letter_queue_name="payment-updates-dlq.fifo",
    )
    for topic in ("my-topic", "my-topic-1", "my-topic-2", "my-topic-3"):
        backend.get_topic(topic)
    TopicPublisher(PickleSerializer(), backend).publish("my-topic-2", {"x": 1}, "group")
    assert backend.queue_depth("payment-updates.fifo") == 1


# -- the testing page ---------------------------------------------------------------------


@dataclass
class State:
    value_set: int | None = None


class StateProbe(Probe):
    def __init__(self, state: State) -> None:
        self.state = state

    def sample(self) -> None:
        pass

    def can_be_measured(self) -> bool:
        self.sample()
        return self.state.value_set is not None

    def wait(self, timeout: float | None = None) -> None:
        try:
            polling.poll(self.can_be_measured, 0.05, timeout=60)
        except polling.TimeoutException as e:
            raise Exception("Timeout!") from e


def test_async_consumer(request: Any) -> None:
    serializer = PickleSerializer()
    backend = InMemoryMessagingBackend()
    queue_name = "testqueue"
    queue = MessagingBackendFactory(backend).init_queue(queue_name)

    def teardown() -> None:
        backend.delete_queue(queue)

    request.addfinalizer(teardown)

    state = State()

    def set_state(message: dict[str, int]) -> None:
        state.value_set = message["value"]

    consumer = Consumer(on_message=set_state)
    handler = SimpleMessageDispatcher(consumer, serializer, backend=backend)
    loop = threading.Thread(target=lambda: handler.consume_loop(queue_name), daemon=True)
    loop.start()

    publisher = QueuePublisher(serializer, backend)
    publisher.publish(queue_name, {"value": 1})

    probe = StateProbe(state)
    probe.wait()

    assert_that(state.value_set, is_(1))
    handler.stop()
    loop.join(5)
    assert not loop.is_alive()


def test_inmemory_messaging_backend(capsys: Any) -> None:
    consumer_1 = Consumer(lambda message: print(f"Hello {message['message']}!"))
    consumer_2 = Consumer(lambda message: print(f"Hello {message['message']} 2!"))

    serializer = PickleSerializer()
    backend = InMemoryMessagingBackend()
    link_synchronously("somequeue", [consumer_1, consumer_2], serializer, backend)

    publisher = QueuePublisher(PickleSerializer(), backend=backend)
    publisher.publish("somequeue", {"message": "Mary"})

    assert capsys.readouterr().out == "Hello Mary!\nHello Mary 2!\n"
