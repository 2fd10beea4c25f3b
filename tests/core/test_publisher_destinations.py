"""The destination rules every publisher follows, blocking or asyncio: handles looked up once
and cached, a cached handle dropped when its destination was deleted, a missing topic created
with a warning (or refused)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from melange import InMemoryMessagingBackend, JsonSerializer, MessagingBackendFactory
from melange.aio import AsyncQueuePublisher, AsyncTopicPublisher
from melange.exceptions import QueueNotFoundError, TopicNotFoundError
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.publish_middleware import PublishMiddleware
from melange.publishers import (
    CreateTopic,
    Destinations,
    LookUp,
    QueuePublisher,
    Send,
    SendBatch,
    TopicPublisher,
    run_steps,
)


class CountingMemory(InMemoryMessagingBackend):
    """The in-memory backend, counting lookups and topic creations."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def get_queue(self, queue_name: str) -> QueueWrapper:
        self.calls.append(f"get_queue {queue_name}")
        return super().get_queue(queue_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        self.calls.append(f"get_topic {topic_name}")
        return super().get_topic(topic_name)

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        self.calls.append(f"declare_topic {topic_name}")
        return super().declare_topic(topic_name)


def make_backend() -> CountingMemory:
    backend = CountingMemory()
    MessagingBackendFactory(backend).init_queue("q", "t")
    backend.calls.clear()
    return backend


# Each publisher kind as a blocking call: the asyncio ones run on a fresh event loop.
Publish = Callable[..., Any]


def blocking_publishers(backend: CountingMemory, **options: Any) -> tuple[Publish, Publish]:
    queue = QueuePublisher(JsonSerializer(), backend)
    topic = TopicPublisher(JsonSerializer(), backend, **options)
    return queue.publish, topic.publish


def async_publishers(backend: CountingMemory, **options: Any) -> tuple[Publish, Publish]:
    queue = AsyncQueuePublisher(JsonSerializer(), backend)
    topic = AsyncTopicPublisher(JsonSerializer(), backend, **options)
    return (
        lambda *args: asyncio.run(queue.publish(*args)),
        lambda *args: asyncio.run(topic.publish(*args)),
    )


KINDS = pytest.mark.parametrize(
    ("make", "name"),
    [(blocking_publishers, "TopicPublisher"), (async_publishers, "AsyncTopicPublisher")],
    ids=["blocking", "asyncio"],
)


@KINDS
def test_handles_are_looked_up_once(make: Any, name: str) -> None:
    backend = make_backend()
    to_queue, to_topic = make(backend)
    for n in range(3):
        to_queue("q", n)
        to_topic("t", n)
    assert backend.calls == ["get_queue q", "get_topic t"]
    assert backend.queue_depth("q") == 6


@KINDS
def test_a_deleted_destination_raises_and_is_looked_up_again(make: Any, name: str) -> None:
    backend = make_backend()
    to_queue, _ = make(backend)
    to_queue("q", 1)
    backend.delete_queue(QueueWrapper("q", "q"))
    with pytest.raises(QueueNotFoundError):
        to_queue("q", 2)
    with pytest.raises(QueueNotFoundError):
        to_queue("q", 3)  # looked up again, and still missing
    assert backend.calls == ["get_queue q", "get_queue q"]
    MessagingBackendFactory(backend).init_queue("q")
    to_queue("q", 4)
    assert backend.calls[-1] == "get_queue q"
    assert backend.queue_depth("q") == 1


@KINDS
def test_a_missing_topic_is_created_once_with_a_warning(
    make: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    _, to_topic = make(backend)
    with caplog.at_level(logging.WARNING, logger="melange.publishers"):
        to_topic("new", 1)
        to_topic("new", 2)
    assert backend.calls == ["get_topic new", "declare_topic new"]
    [record] = caplog.records
    assert record.getMessage() == (
        f"topic 'new' did not exist and was created; pass declare_topics=False to the {name} "
        "to make this an error"
    )


@KINDS
def test_a_missing_topic_is_refused_without_declare_topics(make: Any, name: str) -> None:
    backend = make_backend()
    _, to_topic = make(backend, declare_topics=False)
    with pytest.raises(TopicNotFoundError):
        to_topic("new", 1)
    assert backend.calls == ["get_topic new"]


@KINDS
def test_a_missing_queue_is_never_created(make: Any, name: str) -> None:
    backend = make_backend()
    to_queue, _ = make(backend)
    with pytest.raises(QueueNotFoundError):
        to_queue("nowhere", 1)
    assert "nowhere" not in backend.queue_names()


@KINDS
def test_a_destination_name_must_be_a_str(make: Any, name: str) -> None:
    to_queue, to_topic = make(make_backend())
    with pytest.raises(TypeError, match="destination name must be a str"):
        to_queue(b"q", 1)
    with pytest.raises(TypeError, match="destination name must be a str"):
        to_topic(None, 1)


def test_batches_share_the_cache_and_an_empty_one_looks_nothing_up() -> None:
    backend = make_backend()
    publisher = TopicPublisher(JsonSerializer(), backend)
    asynchronous = AsyncTopicPublisher(JsonSerializer(), backend)
    assert publisher.publish_batch("t", []) == []
    assert asyncio.run(asynchronous.publish_batch("t", [])) == []
    assert backend.calls == []
    assert len(publisher.publish_batch("t", [1, 2])) == 2
    publisher.publish("t", 3)
    assert len(asyncio.run(asynchronous.publish_batch("t", [4]))) == 1
    assert backend.calls == ["get_topic t", "get_topic t"]  # once per publisher
    assert backend.queue_depth("q") == 4


# -- the rules themselves, without a backend -------------------------------------------------


def message() -> Message:
    return Message.create("{}", None, None)


def test_steps_look_up_then_send_then_hit_the_cache() -> None:
    destinations = Destinations("TopicPublisher")
    sent = message()
    step = destinations.publish("t", sent)
    assert next(step) == LookUp("t")
    assert step.send("handle") == Send(sent, "handle")
    with pytest.raises(StopIteration) as done:
        step.send(None)
    assert done.value.value is sent
    # Cached: the next publish sends at once.
    step = destinations.publish("t", sent)
    assert next(step) == Send(sent, "handle")


def test_steps_drop_the_handle_of_a_deleted_destination() -> None:
    destinations = Destinations("QueuePublisher")
    performed: list[Any] = []

    def perform(effect: Any) -> Any:
        performed.append(effect)
        if isinstance(effect, Send):
            raise QueueNotFoundError("q")
        return "handle"

    for _ in range(2):
        with pytest.raises(QueueNotFoundError):
            run_steps(destinations.publish("q", message()), perform)
    assert [type(effect) for effect in performed] == [LookUp, Send, LookUp, Send]


def test_steps_create_a_missing_topic_only_when_asked() -> None:
    def perform(effect: Any) -> Any:
        if isinstance(effect, LookUp):
            raise TopicNotFoundError(effect.name)
        assert isinstance(effect, CreateTopic | SendBatch)
        return "created"

    destinations = Destinations("TopicPublisher")
    with pytest.raises(TopicNotFoundError):
        run_steps(destinations.handle("t"), perform)
    assert run_steps(destinations.handle("t", create_topic=True), perform) == "created"
    batch = [message()]
    assert run_steps(destinations.publish_batch("t", batch), perform) is batch  # cached


class Recording(PublishMiddleware):
    """Records each publishing context: the message and how the send ended."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    @contextlib.contextmanager
    def publishing(self, message: Message, destination: str, kind: Any) -> Iterator[None]:
        message.headers["stamped"] = "yes"
        try:
            yield
        except Exception as exc:
            self.seen.append((destination, kind, type(exc).__name__))
            raise
        self.seen.append((destination, kind, "sent"))


def test_middleware_wraps_every_send_whether_the_handle_was_cached_or_not() -> None:
    backend = make_backend()
    middleware = Recording()
    publisher = QueuePublisher(JsonSerializer(), backend, middleware=[middleware])
    first = publisher.publish("q", {"n": 1})  # looked up
    second = publisher.publish("q", {"n": 2})  # from the cached handle
    assert backend.calls == ["get_queue q"]
    assert first.headers["stamped"] == second.headers["stamped"] == "yes"
    # Deleted meanwhile: the cached send fails inside the context, and the handle goes.
    backend.delete_queue(QueueWrapper("q", "q"))
    with pytest.raises(QueueNotFoundError):
        publisher.publish("q", {"n": 3})
    assert middleware.seen == [
        ("q", "queue", "sent"),
        ("q", "queue", "sent"),
        ("q", "queue", "QueueNotFoundError"),
    ]
    with pytest.raises(QueueNotFoundError):
        publisher.publish("q", {"n": 4})
    assert backend.calls == ["get_queue q", "get_queue q"]
