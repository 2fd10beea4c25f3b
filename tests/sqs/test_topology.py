"""Queues, topics, subscriptions and dead-letter queues set up through the factory."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import botocore.config
import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    ConfigurationError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message
from melange.testing.conformance import receive


def queue_attributes(sqs: Any, name: str) -> dict[str, str]:
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])


def subscription_attributes(sns: Any, topic_arn: str) -> list[dict[str, str]]:
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    return [
        sns.get_subscription_attributes(SubscriptionArn=s["SubscriptionArn"])["Attributes"]
        for s in subscriptions
    ]


def test_queue_gets_friendly_and_raw_attributes(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(
        name,
        visibility_timeout=45,
        message_retention_period=3600,
        delay_seconds=0,
        attributes={"MaximumMessageSize": "2048"},
    )
    attributes = queue_attributes(sqs, name)
    assert attributes["VisibilityTimeout"] == "45"
    assert attributes["MessageRetentionPeriod"] == "3600"
    assert attributes["MaximumMessageSize"] == "2048"


def test_fractional_seconds_round_up_to_whole_seconds(
    make_aws_backend: Callable[..., AWSBackend], sqs: Any, names: Any
) -> None:
    backend = make_aws_backend(visibility_timeout=0.3)
    assert backend.visibility_timeout == 1
    name = names.queue()
    MessagingBackendFactory(backend).init_queue(name, visibility_timeout=0.3)
    assert queue_attributes(sqs, name)["VisibilityTimeout"] == "1"


def test_unknown_queue_option_is_refused_naming_the_known_ones(
    aws_backend: AWSBackend, names: Any
) -> None:
    with pytest.raises(ConfigurationError, match=r"visibilty_timeout.*visibility_timeout"):
        MessagingBackendFactory(aws_backend).init_queue(names.queue(), visibilty_timeout=3)


def test_declaring_again_updates_attributes_and_keeps_messages(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    factory = MessagingBackendFactory(aws_backend)
    factory.init_queue(name, visibility_timeout=30)
    aws_backend.publish_to_queue(Message.create('"kept"', "json", 1), aws_backend.get_queue(name))
    factory.init_queue(name, visibility_timeout=60)
    assert queue_attributes(sqs, name)["VisibilityTimeout"] == "60"
    [got] = receive(aws_backend, aws_backend.get_queue(name), 1)
    assert got.content == '"kept"'
    aws_backend.acknowledge(got)


def test_dead_letter_queue_gets_a_redrive_policy_with_default_and_custom_counts(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    factory = MessagingBackendFactory(aws_backend)
    first, second, dlq = names.queue(), names.queue(), names.queue("dlq")
    factory.init_queue(first, dead_letter_queue_name=dlq)
    factory.init_queue(second, dead_letter_queue_name=dlq, max_receive_count=7)
    dlq_arn = queue_attributes(sqs, dlq)["QueueArn"]
    assert json.loads(queue_attributes(sqs, first)["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": 4,
    }
    assert json.loads(queue_attributes(sqs, second)["RedrivePolicy"])["maxReceiveCount"] == 7


def test_max_receive_count_without_dead_letter_queue_is_refused(
    aws_backend: AWSBackend, names: Any
) -> None:
    with pytest.raises(ConfigurationError, match="dead_letter_queue_name"):
        MessagingBackendFactory(aws_backend).init_queue(names.queue(), max_receive_count=3)


def test_fifo_queue_gets_a_fifo_dead_letter_queue_and_content_based_dedup(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name, dlq = names.queue(fifo=True), names.queue("dlq", fifo=True)
    MessagingBackendFactory(aws_backend).init_queue(name, dead_letter_queue_name=dlq)
    attributes = queue_attributes(sqs, name)
    assert attributes["FifoQueue"] == "true"
    assert attributes["ContentBasedDeduplication"] == "true"
    assert queue_attributes(sqs, dlq)["FifoQueue"] == "true"


def test_fifo_queue_with_standard_dead_letter_queue_is_refused(
    aws_backend: AWSBackend, names: Any
) -> None:
    with pytest.raises(ConfigurationError, match="both be FIFO"):
        MessagingBackendFactory(aws_backend).init_queue(
            names.queue(fifo=True), dead_letter_queue_name=names.queue("dlq")
        )


def test_fifo_topic_feeds_fifo_queue_in_group_order(
    aws_backend: AWSBackend, sns: Any, names: Any
) -> None:
    topic, queue = names.topic(fifo=True), names.queue(fifo=True)
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    handle = aws_backend.get_topic(topic)
    attributes = sns.get_topic_attributes(TopicArn=handle.unwrapped_obj)["Attributes"]
    assert attributes["FifoTopic"] == "true"
    assert attributes["ContentBasedDeduplication"] == "true"
    for i in range(4):
        message = Message.create(f'{{"i": {i}}}', "json", 1)
        message.group_id = "g"
        aws_backend.publish_to_topic(message, handle)
    got = receive(aws_backend, aws_backend.get_queue(queue), 4)
    assert [m.content for m in got] == [f'{{"i": {i}}}' for i in range(4)]
    assert {m.group_id for m in got} == {"g"}
    aws_backend.acknowledge_batch(got)


def test_fifo_queue_cannot_subscribe_to_a_standard_topic(
    aws_backend: AWSBackend, names: Any
) -> None:
    with pytest.raises(ConfigurationError, match="FIFO topics"):
        MessagingBackendFactory(aws_backend).init_queue(names.queue(fifo=True), names.topic())


def test_subscribing_adds_policy_statements_and_keeps_foreign_ones(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = queue_attributes(sqs, name)["QueueArn"]
    foreign = {
        "Sid": "ops-team-read",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "sqs:ReceiveMessage",
        "Resource": arn,
    }
    policy = {"Version": "2012-10-17", "Statement": [foreign]}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    factory = MessagingBackendFactory(aws_backend)
    first, second = names.topic(), names.topic()
    factory.init_queue(name, first)
    factory.init_queue(name, first, second)
    factory.init_queue(name, second)
    statements = json.loads(queue_attributes(sqs, name)["Policy"])["Statement"]
    assert statements[0] == foreign
    sources = [s["Condition"]["ArnEquals"]["aws:SourceArn"] for s in statements[1:]]
    assert sorted(sources) == sorted(
        aws_backend.get_topic(t).unwrapped_obj for t in (first, second)
    )
    assert all(s["Principal"] == {"Service": "sns.amazonaws.com"} for s in statements[1:])


def test_an_existing_statement_for_the_topic_is_not_duplicated(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name, topic = names.queue(), names.topic()
    factory = MessagingBackendFactory(aws_backend)
    topic_arn = factory.init_topic(topic).unwrapped_obj
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    existing = {
        "Sid": "written-elsewhere",
        "Effect": "Allow",
        "Principal": "*",
        "Action": "SQS:SendMessage",
        "Resource": queue_attributes(sqs, name)["QueueArn"],
        "Condition": {"ArnLike": {"aws:SourceArn": topic_arn}},
    }
    policy = {"Version": "2012-10-17", "Statement": [existing]}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    factory.init_queue(name, topic)
    assert json.loads(queue_attributes(sqs, name)["Policy"])["Statement"] == [existing]


def test_filter_events_sets_the_subscription_filter_policy(
    aws_backend: AWSBackend, sns: Any, names: Any
) -> None:
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(
        queue, topic, filter_events=["OrderCreated", "OrderPaid"]
    )
    [attributes] = subscription_attributes(sns, aws_backend.get_topic(topic).unwrapped_obj)
    assert json.loads(attributes["FilterPolicy"]) == {"manifest": ["OrderCreated", "OrderPaid"]}
    assert attributes["RawMessageDelivery"] == "false"


def test_redeclaring_a_subscription_changes_its_filter_without_duplicating_it(
    aws_backend: AWSBackend, sns: Any, names: Any
) -> None:
    topic, queue = names.topic(), names.queue()
    factory = MessagingBackendFactory(aws_backend)
    factory.init_queue(queue, topic, filter_events=["A"])
    factory.init_queue(queue, topic, filter_events=["B"])
    [attributes] = subscription_attributes(sns, aws_backend.get_topic(topic).unwrapped_obj)
    assert json.loads(attributes["FilterPolicy"]) == {"manifest": ["B"]}


def test_missing_queue_raises_and_is_not_created(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue("missing")
    with pytest.raises(QueueNotFoundError, match=rf"{name}.*init_queue"):
        aws_backend.get_queue(name)
    assert not sqs.list_queues(QueueNamePrefix=name).get("QueueUrls")


def test_missing_topic_raises_and_is_not_created(
    aws_backend: AWSBackend, sns: Any, names: Any
) -> None:
    name = names.topic("missing")
    with pytest.raises(TopicNotFoundError, match=rf"{name}.*init_topic"):
        aws_backend.get_topic(name)
    arns = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    assert not any(arn.endswith(":" + name) for arn in arns)


def test_unreachable_endpoint_raises_connection_error_not_queue_not_found() -> None:
    backend = AWSBackend(
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=botocore.config.Config(connect_timeout=1, retries={"max_attempts": 1}),
    )
    try:
        with pytest.raises(BackendConnectionError, match="cannot reach"):
            backend.get_queue("anything")
    finally:
        backend.close_connection()


class _Refusing(BaseHTTPRequestHandler):
    """An SQS-speaking endpoint that refuses every request as an access-denied error."""

    seen: list[str] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.seen.append(str(self.headers.get("X-Amz-Target", "?")).rsplit(".", 1)[-1])
        body = json.dumps(
            {"__type": "com.amazon.coral.service#AccessDeniedException", "message": "denied"}
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("x-amzn-query-error", "AccessDenied;Sender")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_endpoint() -> Iterator[tuple[str, list[str]]]:
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    seen: list[str] = []
    _Refusing.seen = seen
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_access_denied_raises_backend_error_and_creates_nothing(
    refusing_endpoint: tuple[str, list[str]],
) -> None:
    url, seen = refusing_endpoint
    backend = AWSBackend(
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    try:
        with pytest.raises(BackendError, match="AccessDenied") as caught:
            backend.get_queue("orders")
        assert not isinstance(caught.value, QueueNotFoundError)
        assert seen == ["GetQueueUrl"]
    finally:
        backend.close_connection()


def test_deleting_a_queue_forgets_its_cached_url(aws_backend: AWSBackend, names: Any) -> None:
    name = names.queue()
    factory = MessagingBackendFactory(aws_backend)
    factory.init_queue(name)
    factory.delete_queue(name)
    with pytest.raises(QueueNotFoundError):
        aws_backend.get_queue(name)


def test_deleting_a_queue_unsubscribes_it_so_the_topic_keeps_working(
    aws_backend: AWSBackend, sns: Any, names: Any
) -> None:
    topic, gone, kept = names.topic(), names.queue(), names.queue()
    factory = MessagingBackendFactory(aws_backend)
    factory.init_queue(gone, topic)
    factory.init_queue(kept, topic)
    factory.delete_queue(gone)
    topic_arn = aws_backend.get_topic(topic).unwrapped_obj
    endpoints = [
        s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    ]
    assert len(endpoints) == 1
    assert endpoints[0].endswith(":" + kept)
    aws_backend.publish_to_topic(
        Message.create('"still delivered"', "json", 1), aws_backend.get_topic(topic)
    )
    [got] = receive(aws_backend, aws_backend.get_queue(kept), 1)
    assert got.content == '"still delivered"'


def test_local_backend_builds_endpoints_from_host_and_port(sqs_endpoint: Any, names: Any) -> None:
    from melange.backends.sqs.elasticmq import LocalSQSBackend
    from melange.backends.sqs.localsqs import endpoint

    assert endpoint("localhost", "9324") == "http://localhost:9324"
    assert endpoint("http://localhost", 9324) == "http://localhost:9324"
    assert endpoint("https://sqs.local/", 443) == "https://sqs.local:443"
    with pytest.raises(ConfigurationError, match="host"):
        LocalSQSBackend(host=None, port=None)
    with pytest.raises(ConfigurationError, match="port must be a number"):
        LocalSQSBackend(host="localhost", port="x")
    if not sqs_endpoint.port:
        pytest.skip("the endpoint under test is real AWS, not a local broker")
    backend = LocalSQSBackend(host=sqs_endpoint.host, port=str(sqs_endpoint.port))
    try:
        name = names.queue()
        MessagingBackendFactory(backend).init_queue(name)
        assert backend.get_queue(name).name == name
        assert backend.endpoint_url == f"http://{sqs_endpoint.host}:{sqs_endpoint.port}"
    finally:
        backend.close_connection()


def test_handles_expose_url_and_arn_like_720_boto3_objects(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    url = aws_backend.get_queue(queue).unwrapped_obj
    arn = aws_backend.get_topic(topic).unwrapped_obj
    assert url.url == url == sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    assert arn.arn == arn
    assert arn.endswith(":" + topic)


def test_backend_options_keep_their_720_names_and_defaults(
    make_aws_backend: Callable[..., AWSBackend],
) -> None:
    backend = make_aws_backend()
    assert backend.max_number_of_messages == 10
    assert backend.visibility_timeout == 100
    assert backend.wait_time_seconds == 10
    with pytest.raises(ConfigurationError, match="max_number_of_messages"):
        make_aws_backend(max_number_of_messages=11)


def test_redeclaring_without_filter_events_lets_every_message_through_again(
    aws_backend: AWSBackend, names: Any
) -> None:
    topic, queue = names.topic(), names.queue()
    factory = MessagingBackendFactory(aws_backend)
    factory.init_queue(queue, topic, filter_events=["OrderCreated"])
    factory.init_queue(queue, topic)
    aws_backend.publish_to_topic(
        Message.create('"other"', "OrderCancelled", 1), aws_backend.get_topic(topic)
    )
    [got] = receive(aws_backend, aws_backend.get_queue(queue), 1)
    assert got.manifest == "OrderCancelled"
    aws_backend.acknowledge(got)


def test_fifo_queue_deduplicates_equal_bodies_unless_given_dedup_ids(
    aws_backend: AWSBackend, names: Any
) -> None:
    name = names.queue(fifo=True)
    MessagingBackendFactory(aws_backend).init_queue(name)
    queue = aws_backend.get_queue(name)
    for dedup in (None, None, "first", "second"):
        message = Message.create('{"same": true}', "json", 1)
        message.group_id = "g"
        message.deduplication_id = dedup
        aws_backend.publish_to_queue(message, queue)
    got = receive(aws_backend, queue, 3)
    assert [m.deduplication_id for m in got][1:] == ["first", "second"]
    aws_backend.acknowledge_batch(got)
    assert aws_backend.retrieve_messages(queue, wait_seconds=1) == []
