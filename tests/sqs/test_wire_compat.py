"""Wire compatibility with Melange 7.2.0 services sharing the same queues and topics.

Messages are built by hand with raw boto3 exactly as 7.2.0 writes them and read by us, and
what we publish is read back with raw boto3 and decoded the way 7.2.0 decodes it.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs import wire
from melange.backends.sqs.backend import AWSBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_REASON, Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer
from melange.serializers.pickle import PickleSerializer
from melange.testing.conformance import receive


def attributes_720(manifest: str, serializer_id: int) -> dict[str, Any]:
    """The SQS message attributes 7.2.0 sets on a queue publish."""
    return {
        "manifest": {"DataType": "String", "StringValue": manifest},
        "serializer_id": {"DataType": "Number", "StringValue": str(serializer_id)},
    }


def read_like_720(raw: dict[str, Any]) -> tuple[str, str | None, int | None]:
    """Decode a received SQS message the way 7.2.0 does: unwrap ``Message``, take manifest and
    serializer id from the envelope's attributes, else from the SQS message attributes."""
    body = json.loads(raw["Body"])
    content = body["Message"]
    envelope = body.get("MessageAttributes", {})
    sqs_attributes = raw.get("MessageAttributes", {})

    def value(name: str) -> str | None:
        if name in envelope:
            return str(envelope[name]["Value"])
        if name in sqs_attributes:
            return str(sqs_attributes[name]["StringValue"])
        return None

    serializer_id = value("serializer_id")
    return content, value("manifest"), int(serializer_id) if serializer_id else None


def raw_receive(sqs: Any, url: str) -> dict[str, Any]:
    response = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5, MessageAttributeNames=["All"]
    )
    [message] = response["Messages"]
    return dict(message)


# -- what 7.2.0 writes, we read --------------------------------------------------------------


def test_queue_message_written_by_720_is_decoded(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody='{"Message": "{\\"id\\": 5, \\"reference\\": \\"r-5\\"}"}',
        MessageAttributes=attributes_720("json", 1),
    )
    [got] = receive(aws_backend, aws_backend.get_queue(name), 1)
    assert got.content == '{"id": 5, "reference": "r-5"}'
    assert got.manifest == "json"
    assert got.serializer_id == 1
    assert got.message_id == sent["MessageId"]
    assert got.attempt == 1
    assert got.headers == {}
    aws_backend.acknowledge(got)


def test_pickle_message_written_by_720_reaches_a_consumer(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    serializer = PickleSerializer()
    payload = {"order": 7, "items": ["a", "b"]}
    content = serializer.serialize(payload)
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"Message": content}),
        MessageAttributes=attributes_720(serializer.manifest(payload), 2),
    )
    received: list[Any] = []
    dispatcher = MessageDispatcher(
        [serializer], backend=aws_backend, consumers=[Consumer(on_message=received.append)]
    )
    for _ in range(5):
        if received:
            break
        dispatcher.consume_event(name, wait_seconds=2)
    assert received == [payload]


def test_sns_envelope_written_by_720_topic_publish_is_decoded(
    aws_backend: AWSBackend, sqs: Any, sns: Any, names: Any
) -> None:
    # 7.2.0 publishes the content itself to SNS with manifest/serializer_id attributes; the
    # subscribed queue (not raw) receives SNS's envelope.
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    arn = aws_backend.get_topic(topic).unwrapped_obj
    sns.publish(
        TopicArn=arn,
        Message='{"event": "OrderCreated"}',
        MessageAttributes={
            "manifest": {"DataType": "String", "StringValue": "json"},
            "serializer_id": {"DataType": "Number", "StringValue": "1"},
        },
    )
    [got] = receive(aws_backend, aws_backend.get_queue(queue), 1)
    assert got.content == '{"event": "OrderCreated"}'
    assert got.manifest == "json"
    assert got.serializer_id == 1
    body = json.loads(got.metadata.body)
    assert body["Type"] == "Notification"
    aws_backend.acknowledge(got)


def test_hand_built_sns_envelope_is_unwrapped_byte_for_byte(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    envelope = (
        "{\n"
        '  "Type" : "Notification",\n'
        '  "MessageId" : "0a1b2c3d-1111-2222-3333-444455556666",\n'
        '  "TopicArn" : "arn:aws:sns:us-east-1:123456789012:orders",\n'
        '  "Message" : "{\\"id\\": 1, \\"note\\": \\"caf\\u00e9\\"}",\n'
        '  "Timestamp" : "2024-01-01T00:00:00.000Z",\n'
        '  "SignatureVersion" : "1",\n'
        '  "MessageAttributes" : {\n'
        '    "manifest" : {"Type":"String","Value":"OrderResponse"},\n'
        '    "serializer_id" : {"Type":"Number","Value":"2"}\n'
        "  }\n"
        "}"
    )
    sqs.send_message(QueueUrl=url, MessageBody=envelope)
    [got] = receive(aws_backend, aws_backend.get_queue(name), 1)
    assert got.content == '{"id": 1, "note": "café"}'
    assert got.manifest == "OrderResponse"
    assert got.serializer_id == 2
    aws_backend.acknowledge(got)


def test_body_that_is_not_an_envelope_is_read_with_sqs_attributes(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sqs.send_message(
        QueueUrl=url, MessageBody='{"id": 3}', MessageAttributes=attributes_720("json", 1)
    )
    [got] = receive(aws_backend, aws_backend.get_queue(name), 1)
    assert got.content == '{"id": 3}'
    assert (got.manifest, got.serializer_id) == ("json", 1)
    aws_backend.acknowledge(got)


# -- what we write, 7.2.0 reads ----------------------------------------------------------------


def test_queue_publish_writes_the_720_body_and_attributes(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    sent = QueuePublisher(JsonSerializer(), aws_backend).publish(
        name, {"id": 9, "text": "naïve"}, correlation_id="corr-9"
    )
    raw = raw_receive(sqs, sqs.get_queue_url(QueueName=name)["QueueUrl"])
    assert raw["Body"] == json.dumps({"Message": sent.content})
    assert read_like_720(raw) == (sent.content, "json", 1)
    attributes = raw["MessageAttributes"]
    assert attributes["manifest"]["DataType"] == "String"
    assert attributes["serializer_id"]["DataType"] == "Number"
    assert attributes["serializer_id"]["StringValue"] == "1"
    assert attributes["correlation_id"]["StringValue"] == "corr-9"
    assert attributes["published_at"]["DataType"] == "String"
    assert json.loads(sent.content) == {"id": 9, "text": "naïve"}


def test_topic_publish_reaches_a_720_reader_through_the_sns_envelope(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    serializer = PickleSerializer()
    sent = TopicPublisher(serializer, aws_backend).publish(topic, {"paid": True})
    raw = raw_receive(sqs, sqs.get_queue_url(QueueName=queue)["QueueUrl"])
    envelope = json.loads(raw["Body"])
    assert envelope["Type"] == "Notification"
    assert envelope["Message"] == sent.content
    assert envelope["MessageAttributes"]["manifest"] == {"Type": "String", "Value": "dict"}
    assert envelope["MessageAttributes"]["serializer_id"] == {"Type": "Number", "Value": "2"}
    content, manifest, serializer_id = read_like_720(raw)
    assert serializer.deserialize(content, manifest) == {"paid": True}
    assert serializer_id == 2


def test_raw_delivery_subscription_delivers_content_with_attributes(
    aws_backend: AWSBackend, names: Any
) -> None:
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(queue, topic, raw_delivery=True)
    TopicPublisher(JsonSerializer(), aws_backend).publish(topic, {"raw": 1}, correlation_id="c")
    [got] = receive(aws_backend, aws_backend.get_queue(queue), 1)
    assert got.metadata.body == '{"raw": 1}'
    assert got.content == '{"raw": 1}'
    assert (got.manifest, got.serializer_id) == ("json", 1)
    assert got.headers["correlation_id"] == "c"
    aws_backend.acknowledge(got)


# -- headers ---------------------------------------------------------------------------------


def test_headers_beyond_the_sqs_attribute_limit_all_arrive(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    name = names.queue()
    MessagingBackendFactory(aws_backend).init_queue(name)
    headers = {f"h{i}": f"v{i}" for i in range(12)}
    headers["has space"] = "odd name"
    headers["empty"] = ""
    sent = Message.create('"x"', "json", 1, {"correlation_id": "c", **headers})
    queue = aws_backend.get_queue(name)
    aws_backend.publish_to_queue(sent, queue)
    raw = raw_receive(sqs, queue.unwrapped_obj)
    assert len(raw["MessageAttributes"]) <= wire.MAX_ATTRIBUTES
    sqs.change_message_visibility(
        QueueUrl=queue.unwrapped_obj, ReceiptHandle=raw["ReceiptHandle"], VisibilityTimeout=0
    )
    [got] = receive(aws_backend, queue, 1)
    assert got.headers == sent.headers
    aws_backend.acknowledge(got)


def test_topic_headers_travel_in_the_envelope(aws_backend: AWSBackend, names: Any) -> None:
    topic, queue = names.topic(), names.queue()
    MessagingBackendFactory(aws_backend).init_queue(queue, topic)
    TopicPublisher(JsonSerializer(), aws_backend).publish(
        topic, {"n": 1}, correlation_id="corr", causation_id="cause"
    )
    [got] = receive(aws_backend, aws_backend.get_queue(queue), 1)
    assert got.correlation_id == "corr"
    assert got.causation_id == "cause"
    assert got.published_at is not None
    aws_backend.acknowledge(got)


def test_dead_lettered_envelope_keeps_the_original_body_and_adds_failure_headers(
    aws_backend: AWSBackend, sqs: Any, names: Any
) -> None:
    topic, queue, dlq = names.topic(), names.queue(), names.queue("dlq")
    MessagingBackendFactory(aws_backend).init_queue(queue, topic, dead_letter_queue_name=dlq)
    TopicPublisher(JsonSerializer(), aws_backend).publish(topic, {"n": 2}, correlation_id="k")
    [got] = receive(aws_backend, aws_backend.get_queue(queue), 1)
    assert aws_backend.dead_letter(got, {FAILURE_REASON: "boom"}) is True
    raw = raw_receive(sqs, sqs.get_queue_url(QueueName=dlq)["QueueUrl"])
    assert raw["Body"] == got.metadata.body
    assert raw["MessageAttributes"][FAILURE_REASON]["StringValue"] == "boom"
    assert read_like_720(raw) == ('{"n": 2}', "json", 1)


# -- the format on its own -----------------------------------------------------------------


def test_encoding_never_exceeds_ten_attributes_and_decodes_back() -> None:
    headers = {f"header_{i}": str(i) for i in range(20)}
    headers["bad name!"] = "x"
    headers["control"] = "a\x00b"
    attributes = wire.encode_attributes("json", 1, headers)
    assert len(attributes) == wire.MAX_ATTRIBUTES
    strings = {k: v["StringValue"] for k, v in attributes.items()}
    decoded = wire.decode(wire.queue_body("c"), attributes)
    assert decoded.headers == headers
    assert wire.headers_from_strings(strings) == headers
    assert (decoded.content, decoded.manifest, decoded.serializer_id) == ("c", "json", 1)


def test_empty_manifest_is_omitted_and_serializer_id_always_sent() -> None:
    attributes = wire.encode_attributes("", 1, {})
    assert attributes == {"serializer_id": {"DataType": "Number", "StringValue": "1"}}


def test_undecodable_body_is_returned_as_is_for_dead_lettering() -> None:
    decoded = wire.decode("not json {", {})
    assert decoded.content == "not json {"
    assert decoded.serializer_id is None


@settings(max_examples=200, deadline=None)
@given(
    content=st.text(max_size=50),
    manifest=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    serializer_id=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
    headers=st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=14),
)
def test_any_headers_round_trip_within_the_attribute_limit(
    content: str, manifest: str | None, serializer_id: int | None, headers: dict[str, str]
) -> None:
    attributes = wire.encode_attributes(manifest, serializer_id, headers)
    assert len(attributes) <= wire.MAX_ATTRIBUTES
    for value in attributes.values():
        assert value["StringValue"], "SQS refuses empty attribute values"
    decoded = wire.decode(wire.queue_body(content), attributes)
    assert decoded.content == content
    assert decoded.manifest == (manifest or None)
    assert decoded.serializer_id == serializer_id
    assert decoded.headers == headers
