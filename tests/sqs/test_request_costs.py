"""Exact HTTP request counts of the SQS/SNS backend, counted with botocore's send events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.models import Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import receive


def test_publishing_one_message_is_one_request_once_the_url_is_cached(
    aws_backend: AWSBackend,
    make_aws_backend: Callable[..., AWSBackend],
    names: Any,
    count_requests: Callable[..., Any],
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    fresh = make_aws_backend()
    counter = count_requests(fresh.sqs_client, fresh.sns_client)
    publisher = QueuePublisher(JsonSerializer(), fresh)
    publisher.publish(name, {"n": 0})
    assert counter.operations == ["GetQueueUrl", "SendMessage"]
    counter.reset()
    for i in range(5):
        publisher.publish(name, {"n": i})
    assert counter.operations == ["SendMessage"] * 5


def test_backend_caches_the_queue_url_across_publishers(
    aws_backend: AWSBackend, names: Any, count_requests: Callable[..., Any]
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    counter = count_requests(aws_backend.sqs_client)
    for _ in range(3):
        QueuePublisher(JsonSerializer(), aws_backend).publish(name, {"n": 1})
    assert counter.operations == ["SendMessage"] * 3


def test_topic_publisher_never_creates_the_topic_per_message(
    aws_backend: AWSBackend,
    make_aws_backend: Callable[..., AWSBackend],
    names: Any,
    count_requests: Callable[..., Any],
) -> None:
    topic = names.topic()
    MessagingBackendFactory(aws_backend).init_topic(topic)
    fresh = make_aws_backend()
    counter = count_requests(fresh.sqs_client, fresh.sns_client)
    publisher = TopicPublisher(JsonSerializer(), fresh)
    publisher.publish(topic, {"n": 0})
    assert "CreateTopic" not in counter.operations
    assert counter.operations[-1] == "Publish"
    counter.reset()
    for i in range(4):
        publisher.publish(topic, {"n": i})
    assert counter.operations == ["Publish"] * 4


def test_batch_publish_is_one_request_per_ten_messages(
    aws_backend: AWSBackend, names: Any, count_requests: Callable[..., Any]
) -> None:
    topic, name = names.topic(), names.queue()
    factory = MessagingBackendFactory(aws_backend)
    factory.init_queue(name)
    factory.init_topic(topic)
    queue, topic_handle = aws_backend.get_queue(name), aws_backend.get_topic(topic)
    counter = count_requests(aws_backend.sqs_client, aws_backend.sns_client)
    messages = [Message.create(f'{{"i": {i}}}', "json", 1) for i in range(25)]
    aws_backend.publish_batch_to_queue(messages, queue)
    assert counter.operations == ["SendMessageBatch"] * 3
    counter.reset()
    aws_backend.publish_batch_to_topic(messages[:20], topic_handle)
    assert counter.operations == ["PublishBatch"] * 2


def test_consuming_a_full_queue_costs_at_most_a_quarter_request_per_message(
    aws_backend: AWSBackend, names: Any, count_requests: Callable[..., Any]
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    total = 30
    QueuePublisher(JsonSerializer(), aws_backend).publish_batch(
        name, [{"i": i} for i in range(total)]
    )
    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=aws_backend, consumers=[Consumer(on_message=handled.append)]
    )
    counter = count_requests(aws_backend.sqs_client)
    for _ in range(total):
        if len(handled) >= total:
            break
        dispatcher.consume_event(name, max_messages=10, wait_seconds=1)
    assert sorted(m["i"] for m in handled) == list(range(total))
    receives = counter.operations.count("ReceiveMessage")
    deletes = counter.operations.count("DeleteMessageBatch")
    assert deletes == receives == 3
    assert counter.total / total <= 0.25
    assert set(counter.operations) == {"ReceiveMessage", "DeleteMessageBatch"}


def test_large_batches_are_split_to_stay_under_the_request_size_limit(
    aws_backend: AWSBackend, names: Any, count_requests: Callable[..., Any]
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    queue = aws_backend.get_queue(name)
    counter = count_requests(aws_backend.sqs_client)
    messages = [Message.create(str(i) * 100_000, "json", 1) for i in range(3)]
    aws_backend.publish_batch_to_queue(messages, queue)
    assert counter.operations == ["SendMessageBatch"] * 2
    got = receive(aws_backend, queue, 3)
    assert sorted(m.content for m in got) == sorted(m.content for m in messages)
    aws_backend.acknowledge_batch(got)
