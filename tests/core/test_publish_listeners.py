"""Publish listeners: every publisher of the process tells them what it sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from melange.aio import AsyncQueuePublisher, AsyncTopicPublisher
from melange.backends.memory import InMemoryMessagingBackend
from melange.publishers import (
    Publication,
    QueuePublisher,
    TopicPublisher,
    add_publish_listener,
    remove_publish_listener,
)
from melange.serializers.json import JsonSerializer


@pytest.fixture
def told() -> Iterator[list[Publication]]:
    seen: list[Publication] = []
    add_publish_listener(seen.append)
    yield seen
    remove_publish_listener(seen.append)


@pytest.fixture
def backend() -> InMemoryMessagingBackend:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("jobs")
    return backend


def test_a_queue_publish_is_told_with_its_payload_and_envelope(
    told: list[Publication], backend: InMemoryMessagingBackend
) -> None:
    sent = QueuePublisher(JsonSerializer(), backend).publish(
        "jobs", {"job": 1}, headers={"sender": "test"}, delay_seconds=2
    )
    [publication] = told
    assert publication.destination == "jobs"
    assert publication.kind == "queue"
    assert publication.payload == {"job": 1}
    assert publication.message is sent
    assert publication.message.headers["sender"] == "test"
    assert publication.delay_seconds == 2


def test_a_topic_publish_without_subscribers_is_told(
    told: list[Publication], backend: InMemoryMessagingBackend
) -> None:
    TopicPublisher(JsonSerializer(), backend).publish("nobody-listens", {"event": 1})
    assert [(p.destination, p.kind, p.payload) for p in told] == [
        ("nobody-listens", "topic", {"event": 1})
    ]


def test_each_message_of_a_batch_is_told(
    told: list[Publication], backend: InMemoryMessagingBackend
) -> None:
    QueuePublisher(JsonSerializer(), backend).publish_batch("jobs", [{"n": 1}, {"n": 2}])
    assert [p.payload for p in told] == [{"n": 1}, {"n": 2}]


def test_the_asyncio_publishers_tell_the_same(
    told: list[Publication], backend: InMemoryMessagingBackend
) -> None:
    async def publish() -> None:
        await AsyncQueuePublisher(JsonSerializer(), backend).publish("jobs", {"job": 2})
        await AsyncTopicPublisher(JsonSerializer(), backend).publish("events", {"event": 2})
        await AsyncQueuePublisher(JsonSerializer(), backend).publish_batch("jobs", [{"n": 3}])

    asyncio.run(publish())
    assert [(p.destination, p.kind, p.payload) for p in told] == [
        ("jobs", "queue", {"job": 2}),
        ("events", "topic", {"event": 2}),
        ("jobs", "queue", {"n": 3}),
    ]


def test_a_refused_publish_is_not_told(
    told: list[Publication], backend: InMemoryMessagingBackend
) -> None:
    with pytest.raises(Exception, match="missing"):
        QueuePublisher(JsonSerializer(), backend).publish("missing", {"job": 1})
    assert told == []


def test_a_failing_listener_never_fails_the_publish(
    backend: InMemoryMessagingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(publication: Publication) -> None:
        raise RuntimeError("listener bug")

    add_publish_listener(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="melange.publishers"):
            QueuePublisher(JsonSerializer(), backend).publish("jobs", {"job": 1})
    finally:
        remove_publish_listener(broken)
    assert backend.queue_depth("jobs") == 1
    assert "publish listener" in caplog.text


def test_a_removed_listener_is_told_nothing_more(backend: InMemoryMessagingBackend) -> None:
    seen: list[Publication] = []
    add_publish_listener(seen.append)
    remove_publish_listener(seen.append)
    QueuePublisher(JsonSerializer(), backend).publish("jobs", {"job": 1})
    assert seen == []
