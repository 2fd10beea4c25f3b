"""Backends and consumers that are not subclasses of Melange's classes, as 7.2.0 accepted
them: hand-written ones, and test doubles that answer to every name (``unittest.mock``)."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest

from melange import MessageDispatcher, QueuePublisher, SimpleMessageDispatcher, TopicPublisher
from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher
from melange.backends.duck_typed import DuckTypedBackend, as_backend
from melange.consumers import Consumer, DuckTypedConsumer, as_consumer
from melange.models import Message
from melange.serializers import JsonSerializer


class RecordingBackend:
    """A 7.2.0-style backend: the contract's methods, no base class, plain handles."""

    def __init__(self, messages: list[Message] | None = None) -> None:
        self.messages = list(messages or [])
        self.calls: list[tuple[str, Any]] = []

    def get_queue(self, name: str) -> dict[str, str]:
        self.calls.append(("get_queue", name))
        return {"url": f"queue://{name}"}

    def declare_topic(self, name: str) -> dict[str, str]:
        self.calls.append(("declare_topic", name))
        return {"arn": f"topic://{name}"}

    def publish_to_queue(self, message: Message, queue: Any, **kwargs: Any) -> None:
        self.calls.append(("publish_to_queue", (message.content, queue, kwargs)))

    def publish_to_topic(self, message: Message, topic: Any, **kwargs: Any) -> None:
        self.calls.append(("publish_to_topic", (message.content, topic, kwargs)))

    def retrieve_messages(self, queue: Any, **kwargs: Any) -> list[Message]:
        self.calls.append(("retrieve_messages", queue))
        taken, self.messages = self.messages, []
        return taken

    def acknowledge(self, message: Message) -> None:
        self.calls.append(("acknowledge", message.content))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class PlainConsumer:
    """A 7.2.0-style consumer: ``accepts`` and ``process``, no base class."""

    def __init__(self, wanted: str = "", fail: bool = False) -> None:
        self.seen: list[Any] = []
        self.wanted = wanted
        self.fail = fail

    def accepts(self, message: Any) -> bool:
        return not self.wanted or message.get("kind") == self.wanted

    def process(self, message: Any) -> None:
        if self.fail:
            raise RuntimeError("consumer failed")
        self.seen.append(message)


def json_messages(*payloads: str) -> list[Message]:
    return [Message.create(payload, "json", JsonSerializer().identifier()) for payload in payloads]


def test_a_queue_publisher_publishes_through_a_duck_typed_backend_with_its_own_handle() -> None:
    backend = RecordingBackend()

    QueuePublisher(JsonSerializer(), backend).publish("orders", {"id": 1})  # type: ignore[arg-type]

    assert backend.calls == [
        ("get_queue", "orders"),
        ("publish_to_queue", ('{"id": 1}', {"url": "queue://orders"}, {})),
    ]


def test_a_topic_publisher_declares_and_publishes_through_a_duck_typed_backend() -> None:
    backend = RecordingBackend()

    TopicPublisher(JsonSerializer(), backend).publish("events", {"id": 2})  # type: ignore[arg-type]

    # 7.2.0 backends have no get_topic: the topic is declared, as 7.2.0 did.
    assert backend.calls == [
        ("declare_topic", "events"),
        ("publish_to_topic", ('{"id": 2}', {"arn": "topic://events"}, {})),
    ]


def test_a_dispatcher_consumes_and_acknowledges_each_message_of_a_duck_typed_backend() -> None:
    backend = RecordingBackend(json_messages('{"kind": "a"}', '{"kind": "b"}'))
    consumer = PlainConsumer()

    dispatcher = SimpleMessageDispatcher(consumer, JsonSerializer(), backend=backend)  # type: ignore[arg-type]
    assert dispatcher.consume_event("orders") == 2

    assert consumer.seen == [{"kind": "a"}, {"kind": "b"}]
    assert ("retrieve_messages", {"url": "queue://orders"}) in backend.calls
    acks = [arg for name, arg in backend.calls if name == "acknowledge"]
    assert acks == ['{"kind": "a"}', '{"kind": "b"}']


def test_a_failing_duck_typed_consumer_leaves_the_message_unacknowledged() -> None:
    backend = RecordingBackend(json_messages('{"kind": "a"}'))

    SimpleMessageDispatcher(
        PlainConsumer(fail=True),  # type: ignore[arg-type]
        JsonSerializer(),
        backend=backend,  # type: ignore[arg-type]
    ).consume_event("orders")

    assert "acknowledge" not in backend.names()


def test_a_message_no_duck_typed_consumer_accepts_is_acknowledged_unprocessed() -> None:
    backend = RecordingBackend(json_messages('{"kind": "a"}'))
    consumer = PlainConsumer(wanted="b")

    SimpleMessageDispatcher(consumer, JsonSerializer(), backend=backend).consume_event("q")  # type: ignore[arg-type]

    assert consumer.seen == []
    assert backend.names().count("acknowledge") == 1


def test_a_mock_backend_that_answers_every_name_is_used_through_the_contract_only() -> None:
    """A double answers ``nack``, ``holds``, ``capabilities``... with mocks; only the 7.2.0
    methods are called on it, the rest take the base class's defaults."""
    double = mock.Mock()
    double.retrieve_messages.return_value = json_messages('{"kind": "a"}', '{"kind": "b"}')
    consumer = PlainConsumer()

    SimpleMessageDispatcher(consumer, JsonSerializer(), backend=double).consume_event("q")  # type: ignore[arg-type]

    assert consumer.seen == [{"kind": "a"}, {"kind": "b"}]
    assert double.acknowledge.call_count == 2
    double.acknowledge_batch.assert_not_called()
    double.holds.assert_not_called()


def test_a_mock_consumer_is_called_for_every_message() -> None:
    backend = RecordingBackend(json_messages('{"kind": "a"}', '{"kind": "b"}'))
    double = mock.Mock()
    double.accepts.return_value = True
    double.name = "tests.MockConsumer"
    double.failure_policy = None

    MessageDispatcher(JsonSerializer(), backend=backend, consumers=[double]).consume_event("q")  # type: ignore[arg-type]

    assert double.process.call_count == 2
    assert backend.names().count("acknowledge") == 2


def test_an_async_publisher_and_dispatcher_take_a_duck_typed_blocking_backend() -> None:
    backend = RecordingBackend(json_messages('{"kind": "a"}'))
    consumer = PlainConsumer()

    async def scenario() -> None:
        await AsyncQueuePublisher(JsonSerializer(), backend).publish("orders", {"id": 3})  # type: ignore[arg-type]
        dispatcher = AsyncMessageDispatcher(
            JsonSerializer(),
            backend=backend,  # type: ignore[arg-type]
            consumers=[consumer],  # type: ignore[list-item]
        )
        await dispatcher.consume_event("orders")

    asyncio.run(scenario())

    assert ("publish_to_queue", ('{"id": 3}', {"url": "queue://orders"}, {})) in backend.calls
    assert consumer.seen == [{"kind": "a"}]


def test_a_detached_duck_typed_consumer_no_longer_receives_messages() -> None:
    backend = RecordingBackend(json_messages('{"kind": "a"}'))
    consumer = PlainConsumer()
    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[consumer])  # type: ignore[arg-type,list-item]

    dispatcher.unattach_consumer(consumer)  # type: ignore[arg-type]
    dispatcher.consume_event("q")

    assert consumer.seen == []


# -- what is still refused, and how it is said ---------------------------------------------------


@pytest.mark.parametrize(
    ("build", "missing"),
    [
        (lambda: QueuePublisher(JsonSerializer(), "sqs://"), "get_queue, publish_to_queue"),
        (lambda: TopicPublisher(JsonSerializer(), 42), "declare_topic, publish_to_topic"),
        (
            lambda: MessageDispatcher(JsonSerializer(), backend="memory://"),
            "get_queue, retrieve_messages, acknowledge",
        ),
        (lambda: AsyncQueuePublisher(JsonSerializer(), "x"), "get_queue, publish_to_queue"),
    ],
)
def test_a_backend_argument_without_the_methods_is_refused_naming_them(
    build: Any, missing: str
) -> None:
    with pytest.raises(TypeError, match="backend must be a MessagingBackend") as raised:
        build()
    assert f"which has no {missing}" in str(raised.value)


def test_a_backend_with_only_some_methods_is_refused_naming_the_others() -> None:
    class Half:
        def get_queue(self, name: str) -> str:
            return name

    with pytest.raises(TypeError, match="Half, which has no publish_to_queue"):
        QueuePublisher(JsonSerializer(), Half())  # type: ignore[arg-type]


def test_objects_without_process_are_still_refused_as_consumers() -> None:
    with pytest.raises(TypeError, match="consumer first"):
        SimpleMessageDispatcher(JsonSerializer(), backend=RecordingBackend())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="object with a process\\(message\\) method, got str"):
        as_consumer("handler")
    with pytest.raises(TypeError, match="accepts is not callable"):
        as_consumer(mock.Mock(accepts=True))


def test_real_classes_are_used_as_they_are() -> None:
    from melange.backends.memory import InMemoryMessagingBackend

    backend = InMemoryMessagingBackend()
    consumer = Consumer(print)

    assert as_backend(backend, ("get_queue",), "test") is backend
    assert as_consumer(consumer) is consumer
    wrapped = as_consumer(PlainConsumer())
    assert isinstance(wrapped, DuckTypedConsumer)
    assert wrapped.name.endswith("PlainConsumer")
    assert isinstance(as_backend(RecordingBackend(), ("get_queue",), "test"), DuckTypedBackend)
