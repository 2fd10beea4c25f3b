"""The SQS/SNS wire format, shared with services still running Melange 7.2.0.

Pure functions with no broker client, so the format can be read and tested on its own.

Publishing to a queue
    The SQS body is the JSON text ``{"Message": <serialized content>}``. The message carries
    the SQS message attributes ``manifest`` (``String``, omitted when empty) and
    ``serializer_id`` (``Number``).

Publishing to a topic
    The SNS message is the serialized content itself, with the same two message attributes.
    A queue subscribed without raw delivery receives SNS's JSON envelope: the content is the
    envelope's ``Message`` and the attributes are under ``MessageAttributes.<name>.Value``.

Headers
    Every header (correlation id, causation id, published-at, failure headers...) travels as
    one more ``String`` attribute. SQS accepts at most ten attributes per message and only
    certain names, non-empty values and some characters; headers that do not fit travel
    together as a JSON object (ASCII-escaped) in the single attribute ``melange_headers``, so
    none is ever dropped.

Receiving
    A body that is a JSON object with a string ``Message`` is unwrapped (7.2.0 queue format or
    SNS envelope); manifest, serializer id and headers are read from the envelope's
    ``MessageAttributes`` first and from the SQS message attributes otherwise. Any other body
    (raw delivery, foreign producers) is taken as the content itself, with the SQS message
    attributes. A body that cannot be decoded is still returned, with whatever attributes it
    has, so the dispatcher can dead-letter it with the reason instead of losing it.

Requests and received messages
    The arguments of ``SendMessage``/``Publish`` requests and their batch entries
    (:func:`queue_entry`, :func:`topic_entry`, checked against the size limit and FIFO rules
    before any request; :func:`chunks` groups them into batches), a received message with the
    :class:`SQSReceipt` that settles it (:func:`to_message`), and a message's copy to a
    dead-letter queue (:func:`dead_letter_entry`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from melange.exceptions import ConfigurationError, MessageTooLargeError, PublishError
from melange.models import (
    CAUSATION_ID,
    CORRELATION_ID,
    FAILURE_ATTEMPTS,
    FAILURE_CONSUMER,
    FAILURE_EXCEPTION,
    FAILURE_QUEUE,
    FAILURE_REASON,
    PUBLISHED_AT,
    Message,
)

logger = logging.getLogger("melange.backends.sqs")

_T = TypeVar("_T")

#: Largest SQS/SNS message, body and attributes together, in bytes.
MAX_MESSAGE_SIZE = 262_144
#: Most entries in one SendMessageBatch/PublishBatch/DeleteMessageBatch call.
MAX_BATCH_ENTRIES = 10
#: Most message attributes SQS accepts on one message.
MAX_ATTRIBUTES = 10

MANIFEST_ATTRIBUTE = "manifest"
SERIALIZER_ID_ATTRIBUTE = "serializer_id"
#: Attribute holding, as a JSON object, the headers that did not fit as attributes of their own.
OVERFLOW_ATTRIBUTE = "melange_headers"
#: Header of a received message whose attributes could not be read, naming the error.
WIRE_ERROR_HEADER = "melange_wire_error"

_RESERVED = {MANIFEST_ATTRIBUTE, SERIALIZER_ID_ATTRIBUTE, OVERFLOW_ATTRIBUTE}
# Headers that get their own attribute first when not all of them fit.
_PRIORITY = (
    CORRELATION_ID,
    CAUSATION_ID,
    PUBLISHED_AT,
    FAILURE_REASON,
    FAILURE_EXCEPTION,
    FAILURE_ATTEMPTS,
    FAILURE_CONSUMER,
    FAILURE_QUEUE,
)
# Characters SQS accepts in bodies and attribute values.
_VALID_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
_NAME = re.compile(r"^[A-Za-z0-9_\-]([A-Za-z0-9_\-]|\.(?!\.))*(?<!\.)$")

#: An attribute as SQS and SNS take it: ``{"DataType": ..., "StringValue": ...}``.
AttributeValue = dict[str, Any]


@dataclass
class Decoded:
    """What a received SQS message means to Melange."""

    content: str
    manifest: str | None
    serializer_id: int | None
    headers: dict[str, str] = field(default_factory=dict)
    #: Whether the body was an SNS notification envelope.
    from_topic: bool = False


def queue_body(content: str) -> str:
    """The SQS body for ``content`` published to a queue (7.2.0 format).

    Non-ASCII characters are escaped, as 7.2.0 did, so the body only holds characters SQS
    accepts whatever the content is.
    """
    return json.dumps({"Message": content})


def _attribute_name_ok(name: str) -> bool:
    lowered = name.lower()
    return (
        0 < len(name) <= 256
        and name not in _RESERVED
        and not lowered.startswith(("aws.", "amazon."))
        and _NAME.match(name) is not None
    )


def encode_attributes(
    manifest: str | None,
    serializer_id: int | None,
    headers: Mapping[str, str],
    extra: Mapping[str, AttributeValue] | None = None,
) -> dict[str, AttributeValue]:
    """Message attributes for a message: manifest, serializer id and headers.

    ``extra`` holds attributes to keep as they are (used when a received message is copied to
    its dead-letter queue). At most :data:`MAX_ATTRIBUTES` attributes result; headers that do
    not fit, or whose name or empty value SQS would refuse, go in :data:`OVERFLOW_ATTRIBUTE`.
    """
    attributes: dict[str, AttributeValue] = dict(extra or {})
    if manifest:
        attributes[MANIFEST_ATTRIBUTE] = {"DataType": "String", "StringValue": manifest}
    if serializer_id is not None:
        attributes[SERIALIZER_ID_ATTRIBUTE] = {
            "DataType": "Number",
            "StringValue": str(int(serializer_id)),
        }
    own: list[tuple[str, str]] = []
    overflow: dict[str, str] = {}
    ordered = [h for h in _PRIORITY if h in headers] + sorted(
        h for h in headers if h not in _PRIORITY
    )
    for name in ordered:
        value = str(headers[name])
        if value and _attribute_name_ok(name) and _VALID_TEXT.match(value):
            own.append((name, value))
        else:
            overflow[name] = value
    free = MAX_ATTRIBUTES - len(attributes)
    if overflow or len(own) > free:
        # One slot goes to the overflow attribute itself.
        keep = max(0, free - 1)
        for name, value in own[keep:]:
            overflow[name] = value
        own = own[:keep]
    for name, value in own:
        attributes[name] = {"DataType": "String", "StringValue": value}
    if overflow:
        attributes[OVERFLOW_ATTRIBUTE] = {
            "DataType": "String",
            "StringValue": json.dumps(overflow, sort_keys=True),
        }
    return attributes


def attributes_size(attributes: Mapping[str, AttributeValue]) -> int:
    """Bytes the attributes count towards the message size, as SQS counts them."""
    size = 0
    for name, value in attributes.items():
        size += len(name.encode("utf-8")) + len(str(value.get("DataType", "")).encode("utf-8"))
        if "StringValue" in value:
            size += len(str(value["StringValue"]).encode("utf-8"))
        elif "BinaryValue" in value:
            size += len(value["BinaryValue"])
    return size


def to_sns_attributes(attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    """SQS-style attributes in the shape SNS takes (string and number attributes only)."""
    return {
        name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        for name, value in attributes.items()
        if "StringValue" in value
    }


def _parse_serializer_id(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            number = float(str(value))
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


def headers_from_strings(values: Mapping[str, str]) -> dict[str, str]:
    """Headers from string attributes: every one but manifest and serializer id, with the
    overflow attribute unpacked."""
    headers = {k: v for k, v in values.items() if k not in _RESERVED}
    overflow = values.get(OVERFLOW_ATTRIBUTE)
    if overflow:
        try:
            packed = json.loads(overflow)
        except (ValueError, RecursionError):
            packed = None
        if isinstance(packed, dict):
            headers.update({str(k): str(v) for k, v in packed.items()})
        else:
            headers[OVERFLOW_ATTRIBUTE] = overflow
    return headers


def _sqs_strings(attributes: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in attributes.items():
        if isinstance(value, Mapping) and "StringValue" in value:
            out[name] = str(value["StringValue"])
    return out


def _envelope_strings(attributes: object) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(attributes, Mapping):
        return out
    for name, value in attributes.items():
        if (
            isinstance(value, Mapping)
            and isinstance(value.get("Value"), str)
            and str(value.get("Type", "String")).startswith(("String", "Number"))
        ):
            out[str(name)] = value["Value"]
    return out


def decode(body: str, message_attributes: Mapping[str, Any] | None) -> Decoded:
    """Read a received SQS body and its message attributes (see the module documentation)."""
    sqs_values = _sqs_strings(message_attributes or {})
    envelope_values: dict[str, str] = {}
    content = body
    from_topic = False
    try:
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        # Not an SNS envelope (or nested past the parser's depth): the body is the content,
        # for the dispatcher to decode, or to dead-letter as poison, on its own.
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("Message"), str):
        content = parsed["Message"]
        from_topic = parsed.get("Type") == "Notification"
        envelope_values = _envelope_strings(parsed.get("MessageAttributes"))
    # The envelope's attributes describe the content; SQS attributes (a dead-lettered copy's
    # failure headers, raw delivery) complete them.
    values = {**sqs_values, **envelope_values}
    manifest = values.get(MANIFEST_ATTRIBUTE) or None
    raw_serializer_id = values.get(SERIALIZER_ID_ATTRIBUTE)
    serializer_id = _parse_serializer_id(raw_serializer_id)
    headers = headers_from_strings(sqs_values)
    headers.update(headers_from_strings(envelope_values))
    if serializer_id is None and raw_serializer_id is not None:
        # Kept for the dispatcher to say what was wrong with it.
        headers[SERIALIZER_ID_ATTRIBUTE] = raw_serializer_id
    return Decoded(content, manifest, serializer_id, headers, from_topic)


# -- requests and received messages ------------------------------------------------------------


@dataclass(frozen=True)
class SQSReceipt:
    """What a received message needs to be settled; kept in :attr:`Message.metadata`.

    The original body and message attributes are kept so a dead-lettered copy is the
    message exactly as it arrived.
    """

    queue_url: str
    queue_name: str
    receipt_handle: str
    sqs_message_id: str
    body: str
    attributes: Mapping[str, AttributeValue]


def with_fifo_fields(entry: dict[str, Any], name: str, message: Message) -> dict[str, Any]:
    """Add the group and deduplication ids a FIFO queue or topic needs to a request entry."""
    if is_fifo(name):
        entry["MessageGroupId"] = message.group_id
        if message.deduplication_id:
            entry["MessageDeduplicationId"] = message.deduplication_id
    return entry


def is_fifo(name: str) -> bool:
    """Whether a queue or topic is FIFO: its name (or URL, or ARN) ends with ``.fifo``."""
    return name.endswith(".fifo")


def chunks(
    items: Sequence[tuple[int, Message, _T]], size_of: Callable[[_T], int]
) -> Iterator[list[tuple[int, Message, _T]]]:
    """Groups of at most ten entries whose payloads add up to at most the size limit."""
    chunk: list[tuple[int, Message, _T]] = []
    total = 0
    for item in items:
        size = size_of(item[2])
        if chunk and (len(chunk) == MAX_BATCH_ENTRIES or total + size > MAX_MESSAGE_SIZE):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


def check_size(payload: str, attributes: Mapping[str, AttributeValue]) -> int:
    """The size SQS counts for a message; raises ``MessageTooLargeError`` over the limit."""
    size = len(payload.encode("utf-8")) + attributes_size(attributes)
    if size > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(size, MAX_MESSAGE_SIZE, "sqs")
    return size


def check_group(message: Message, destination: str, kind: str) -> None:
    """Raise ``ConfigurationError`` for a message without group id to a FIFO destination."""
    if is_fifo(destination) and not message.group_id:
        raise ConfigurationError(
            f"{kind} {destination!r} is FIFO: publish with a message_group_id "
            "(e.g. publisher.publish(name, data, message_group_id='orders'))"
        )


def queue_entry(message: Message, queue_name: str) -> dict[str, Any]:
    """The ``SendMessage`` arguments (or batch entry) of a message to a queue."""
    check_group(message, queue_name, "queue")
    body = queue_body(message.content)
    attributes = encode_attributes(message.manifest, message.serializer_id, message.headers)
    check_size(body, attributes)
    entry: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
    return with_fifo_fields(entry, queue_name, message)


def topic_entry(message: Message, topic_name: str) -> dict[str, Any]:
    """The ``Publish`` arguments (or batch entry) of a message to a topic."""
    check_group(message, topic_name, "topic")
    if not message.content:
        raise PublishError(f"SNS refuses empty messages; nothing published to {topic_name!r}")
    attributes = encode_attributes(message.manifest, message.serializer_id, message.headers)
    check_size(message.content, attributes)
    entry: dict[str, Any] = {
        "Message": message.content,
        "MessageAttributes": to_sns_attributes(attributes),
    }
    return with_fifo_fields(entry, topic_name, message)


def to_message(raw: Mapping[str, Any], url: str, queue_name: str) -> Message:
    """The message of a ``ReceiveMessage`` answer, with its :class:`SQSReceipt`."""
    body = raw.get("Body", "")
    attributes = raw.get("MessageAttributes", {}) or {}
    system = raw.get("Attributes", {}) or {}
    try:
        decoded = decode(body, attributes)
    except Exception as exc:
        # Whatever the sender put there, one message never fails the batch it came in: it
        # goes to the dispatcher as it is, which dead-letters it as poison.
        decoded = Decoded(body, None, None, {WIRE_ERROR_HEADER: f"{type(exc).__name__}"}, False)
    count = system.get("ApproximateReceiveCount")
    receipt = SQSReceipt(
        queue_url=url,
        queue_name=queue_name,
        receipt_handle=raw["ReceiptHandle"],
        sqs_message_id=raw["MessageId"],
        body=body,
        attributes=dict(attributes),
    )
    return Message(
        raw["MessageId"],
        decoded.content,
        receipt,
        decoded.serializer_id,
        decoded.manifest,
        decoded.headers,
        int(count) if count is not None else None,
        system.get("MessageGroupId"),
        system.get("MessageDeduplicationId"),
    )


def dead_letter_entry(
    message: Message, receipt: SQSReceipt, headers: Mapping[str, str], dlq_url: str
) -> dict[str, Any]:
    """The ``SendMessage`` arguments of a received message's copy to a dead-letter queue:
    the original body and attributes, with ``headers`` added."""
    # Keep the original attributes; decode them to headers so that the overflow attribute
    # is rebuilt rather than duplicated, and add the failure headers on top.
    originals = dict(receipt.attributes)
    kept: dict[str, AttributeValue] = {}
    strings: dict[str, str] = {}
    for name, value in originals.items():
        if name in (MANIFEST_ATTRIBUTE, SERIALIZER_ID_ATTRIBUTE) or (
            value.get("DataType", "").startswith("Binary")
        ):
            kept[name] = {
                k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")
            }
        elif "StringValue" in value:
            strings[name] = str(value["StringValue"])
    original = headers_from_strings(strings)
    reason = headers.get(FAILURE_REASON, "dead-lettered")
    body_size = len(receipt.body.encode("utf-8"))
    # Every header if it fits; near the size limit, the original headers and a shortened
    # reason; at worst the shortened reason alone. The body is always kept whole.
    candidates = [
        {**original, **{k: v[:1024] for k, v in headers.items()}},
        {**original, FAILURE_REASON: reason[:200]},
        {FAILURE_REASON: reason[:200]},
    ]
    shortened = False
    for candidate in candidates:
        attributes = encode_attributes(None, None, candidate, kept)
        if body_size + attributes_size(attributes) <= MAX_MESSAGE_SIZE:
            break
        shortened = True
    if shortened:
        logger.warning(
            "message %s is too close to the SQS size limit to carry every header to the "
            "dead-letter queue; some headers were left out of the copy",
            message.message_id,
        )
    entry: dict[str, Any] = {"MessageBody": receipt.body, "MessageAttributes": attributes}
    if is_fifo(dlq_url):
        entry["MessageGroupId"] = message.group_id or "melange-dead-letters"
        # The SQS id, so distinct messages with equal bodies are never merged in the
        # dead-letter queue while a retried move of the same message is.
        entry["MessageDeduplicationId"] = receipt.sqs_message_id
    return entry


__all__ = [
    "MANIFEST_ATTRIBUTE",
    "MAX_ATTRIBUTES",
    "MAX_BATCH_ENTRIES",
    "MAX_MESSAGE_SIZE",
    "OVERFLOW_ATTRIBUTE",
    "SERIALIZER_ID_ATTRIBUTE",
    "AttributeValue",
    "Decoded",
    "SQSReceipt",
    "attributes_size",
    "check_group",
    "check_size",
    "chunks",
    "dead_letter_entry",
    "decode",
    "encode_attributes",
    "headers_from_strings",
    "is_fifo",
    "queue_body",
    "queue_entry",
    "to_message",
    "to_sns_attributes",
    "topic_entry",
    "with_fifo_fields",
]
