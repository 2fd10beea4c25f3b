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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.models import (
    CAUSATION_ID,
    CORRELATION_ID,
    FAILURE_ATTEMPTS,
    FAILURE_CONSUMER,
    FAILURE_EXCEPTION,
    FAILURE_QUEUE,
    FAILURE_REASON,
    PUBLISHED_AT,
)

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
        except ValueError:
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
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("Message"), str):
        content = parsed["Message"]
        from_topic = parsed.get("Type") == "Notification"
        envelope_values = _envelope_strings(parsed.get("MessageAttributes"))
    # The envelope's attributes describe the content; SQS attributes (a dead-lettered copy's
    # failure headers, raw delivery) complete them.
    values = {**sqs_values, **envelope_values}
    manifest = values.get(MANIFEST_ATTRIBUTE) or None
    serializer_id = _parse_serializer_id(values.get(SERIALIZER_ID_ATTRIBUTE))
    headers = headers_from_strings(sqs_values)
    headers.update(headers_from_strings(envelope_values))
    return Decoded(content, manifest, serializer_id, headers, from_topic)


__all__ = [
    "MANIFEST_ATTRIBUTE",
    "MAX_ATTRIBUTES",
    "MAX_BATCH_ENTRIES",
    "MAX_MESSAGE_SIZE",
    "OVERFLOW_ATTRIBUTE",
    "SERIALIZER_ID_ATTRIBUTE",
    "AttributeValue",
    "Decoded",
    "attributes_size",
    "decode",
    "encode_attributes",
    "headers_from_strings",
    "queue_body",
    "to_sns_attributes",
]
