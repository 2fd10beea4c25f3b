"""Bad input: refused before any request, or dead-lettered with the reason; never lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.consumers import Consumer
from melange.exceptions import (
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_REASON, Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import receive


def test_publishing_to_an_unknown_queue_raises_queue_not_found(
    aws_backend: AWSBackend, names: Any
) -> None:
    with pytest.raises(QueueNotFoundError, match="init_queue"):
        QueuePublisher(JsonSerializer(), aws_backend).publish(names.queue("nope"), {"a": 1})


def test_publishing_to_an_unknown_topic_raises_topic_not_found_when_asked(
    aws_backend: AWSBackend, names: Any
) -> None:
    strict = TopicPublisher(JsonSerializer(), aws_backend, declare_topics=False)
    with pytest.raises(TopicNotFoundError, match="init_topic"):
        strict.publish(names.topic("nope"), {"a": 1})


def test_publishing_to_an_unknown_topic_creates_it_once_by_default(
    aws_backend: AWSBackend, names: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic = names.topic("implicit")
    publisher = TopicPublisher(JsonSerializer(), aws_backend)
    publisher.publish(topic, {"a": 1})
    publisher.publish(topic, {"a": 2})
    assert aws_backend.get_topic(topic).name == topic
    assert caplog.text.count("did not exist and was created") == 1


def test_queue_deleted_behind_a_cached_url_raises_queue_not_found(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    publisher = QueuePublisher(JsonSerializer(), aws_backend)
    publisher.publish(name, {"a": 1})
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    with pytest.raises(QueueNotFoundError):
        publisher.publish(name, {"a": 2})


def test_fifo_publish_without_group_id_fails_before_any_request(
    aws_backend: AWSBackend, names: Any, count_requests: Callable[..., Any]
) -> None:
    topic, queue = names.topic(fifo=True), names.queue(fifo=True)
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    queue_handle, topic_handle = aws_backend.get_queue(queue), aws_backend.get_topic(topic)
    counter = count_requests(aws_backend.sqs_client, aws_backend.sns_client)
    message = Message.create('"x"', "json", 1)
    with pytest.raises(ConfigurationError, match="message_group_id"):
        aws_backend.publish_to_queue(message, queue_handle)
    with pytest.raises(ConfigurationError, match="message_group_id"):
        aws_backend.publish_batch_to_queue([message], queue_handle)
    with pytest.raises(ConfigurationError, match="message_group_id"):
        aws_backend.publish_to_topic(message, topic_handle)
    assert counter.total == 0


def test_oversized_body_fails_before_any_request(
    aws_backend: AWSBackend, names: Any, count_requests: Callable[..., Any]
) -> None:
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    queue_handle, topic_handle = aws_backend.get_queue(queue), aws_backend.get_topic(topic)
    counter = count_requests(aws_backend.sqs_client, aws_backend.sns_client)
    big = Message.create("x" * 262_144, "json", 1)
    small = Message.create('"ok"', "json", 1)
    with pytest.raises(MessageTooLargeError, match="262144-byte limit"):
        aws_backend.publish_to_queue(big, queue_handle)
    with pytest.raises(MessageTooLargeError):
        aws_backend.publish_batch_to_queue([small, big], queue_handle)
    with pytest.raises(MessageTooLargeError):
        aws_backend.publish_to_topic(big, topic_handle)
    assert counter.total == 0


def test_batch_reports_each_refused_message_and_sends_the_rest(
    aws_backend: AWSBackend, sns: Any, names: Any
) -> None:
    # A FIFO topic without content-based deduplication refuses entries without a dedup id.
    topic, queue = names.topic(fifo=True), names.queue(fifo=True)
    arn = sns.create_topic(Name=topic, Attributes={"FifoTopic": "true"})["TopicArn"]
    MessagingBackendFactory(aws_backend).init_queue(queue)
    aws_backend.declare_queue(queue, aws_backend.get_topic(topic))
    batch = []
    for i in range(3):
        message = Message.create(f'{{"i": {i}}}', "json", 1)
        message.group_id = "g"
        message.deduplication_id = None if i == 1 else f"d{i}"
        batch.append(message)
    with pytest.raises(BatchPublishError) as caught:
        aws_backend.publish_batch_to_topic(batch, aws_backend.get_topic(topic))
    assert list(caught.value.failures) == [1]
    got = receive(aws_backend, aws_backend.get_queue(queue), 2)
    assert [m.content for m in got] == ['{"i": 0}', '{"i": 2}']
    aws_backend.acknowledge_batch(got)
    assert arn.endswith(topic)


def test_undecodable_messages_are_dead_lettered_with_the_reason_and_the_loop_goes_on(
    make_aws_backend: Callable[..., AWSBackend], sqs: Any, names: Any
) -> None:
    backend = make_aws_backend(wait_time_seconds=1)
    queue, dlq = names.queue(), names.queue("dlq")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    number = {"DataType": "Number", "StringValue": "1"}
    # Not JSON although it claims the JSON serializer.
    sqs.send_message(
        QueueUrl=url, MessageBody="{{not json", MessageAttributes={"serializer_id": number}
    )
    # A serializer id the dispatcher was not given.
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"Message": "{}"}),
        MessageAttributes={"serializer_id": {"DataType": "Number", "StringValue": "99"}},
    )
    # An SNS envelope that lost its attributes.
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"Type": "Notification", "MessageId": "m", "Message": "{}"}),
    )
    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handled.append)]
    )
    errors: list[Exception] = []
    loop = threading.Thread(
        target=dispatcher.consume_loop,
        args=(queue,),
        kwargs={"install_signal_handlers": False, "on_exception": errors.append},
    )
    loop.start()
    try:
        QueuePublisher(JsonSerializer(), backend).publish(queue, {"good": True})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (handled and dispatcher.stats.dead_lettered >= 3):
            time.sleep(0.05)
    finally:
        dispatcher.stop()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert handled == [{"good": True}]
    assert dispatcher.stats.dead_lettered == 3
    dead = receive(backend, backend.get_queue(dlq), 3)
    reasons = sorted(m.headers[FAILURE_REASON] for m in dead)
    assert len(reasons) == 3
    assert all(r.startswith("undecodable message") for r in reasons)
    assert sum("99" in r for r in reasons) == 1
    assert sum("no serializer id" in r for r in reasons) == 1
    assert "{{not json" in {m.metadata.body for m in dead}
    backend.acknowledge_batch(dead)


def test_settling_a_message_not_received_from_sqs_is_refused(aws_backend: AWSBackend) -> None:
    with pytest.raises(ValueError, match="not received from an SQS backend"):
        aws_backend.acknowledge(Message.create('"x"', "json", 1))


def test_dead_lettering_a_message_near_the_size_limit_keeps_body_and_a_short_reason(
    aws_backend: AWSBackend, names: Any
) -> None:
    queue, dlq = names.queue(), names.queue("dlq")
    MessagingBackendFactory(aws_backend).init_queue(queue, dead_letter_queue_name=dlq)
    content = "y" * (262_144 - 500 - len('{"Message": ""}'))
    message = Message.create(content, "json", 1, {"correlation_id": "near-limit"})
    aws_backend.publish_to_queue(message, aws_backend.get_queue(queue))
    [got] = receive(aws_backend, aws_backend.get_queue(queue), 1)
    reason = "E" * 5000
    headers = {FAILURE_REASON: reason, "melange_failure_exception": "X" * 1000}
    assert aws_backend.dead_letter(got, headers) is True
    [dead] = receive(aws_backend, aws_backend.get_queue(dlq), 1)
    assert dead.content == content
    assert dead.headers[FAILURE_REASON] == reason[:200]
    assert dead.headers["correlation_id"] == "near-limit"
    aws_backend.acknowledge(dead)
