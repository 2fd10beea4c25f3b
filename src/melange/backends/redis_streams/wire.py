"""Messages as Redis stream entries, and back.

An entry holds the message in short fields: ``i`` the message id, ``b`` the body, ``s`` the
serializer id, ``m`` the manifest, ``h`` the headers as one JSON object, ``g`` the FIFO group
and ``d`` the deduplication id (each of the last five only when set). A received message
carries a :class:`Receipt` in its ``metadata``: the queue, the entry and the delivery count
of that delivery, which is what a settlement checks to know it still holds the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from melange.models import Message

#: The field names of an entry.
ID, BODY, SERIALIZER, MANIFEST, HEADERS, GROUP_ID, DEDUPLICATION_ID = "ibsmhgd"

_HEADERS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class Receipt(NamedTuple):
    """What a received message needs to be settled.

    Attributes:
        queue: The queue it came from.
        entry_id: Its stream entry.
        delivered: How many times the entry was delivered, this delivery included: a
            settlement applies only while the pending list still counts as many (no other
            receive took the message over since).
        lease: The queue's visibility timeout, in seconds.
    """

    queue: str
    entry_id: str
    delivered: int
    lease: float


def encode_headers(headers: Mapping[str, str]) -> str:
    """Headers as the JSON object an entry keeps."""
    return _HEADERS_ENCODER.encode(dict(headers)) if headers else "{}"


def to_fields(message: Message) -> list[str]:
    """The entry fields of ``message``, flat (name, value, name, value...)."""
    fields = [ID, message.message_id, BODY, message.content]
    if message.serializer_id is not None:
        fields += [SERIALIZER, str(message.serializer_id)]
    if message.manifest is not None:
        fields += [MANIFEST, message.manifest]
    if message.headers:
        fields += [HEADERS, encode_headers(message.headers)]
    if message.group_id is not None:
        fields += [GROUP_ID, message.group_id]
    if message.deduplication_id is not None:
        fields += [DEDUPLICATION_ID, message.deduplication_id]
    return fields


def publish_arguments(messages: Sequence[Message]) -> list[str]:
    """The messages as the publish scripts read them: their fields one after the other (each
    message's start with its ``i`` field, which only a field name at that place can be)."""
    if len(messages) == 1:
        return to_fields(messages[0])
    arguments: list[str] = []
    for message in messages:
        arguments += to_fields(message)
    return arguments


def _as_dict(fields: Sequence[Any]) -> dict[str, str]:
    # Names and values arrive as text (JSON, or replies decoded by the client).
    pairs = iter(fields)
    return dict(zip(pairs, pairs, strict=False))


def to_message(
    entry_id: str, fields: Sequence[Any] | Mapping[str, str], receipt: Receipt | None, failed: int
) -> Message:
    """The message an entry holds.

    ``failed`` is how many attempts at it failed so far. A received message (with a
    ``receipt``) is on the attempt after them; a peeked copy, which cannot be settled, tells
    how many failed (``None``: none).
    """
    values = dict(fields) if isinstance(fields, Mapping) else _as_dict(fields)
    serializer = values.get(SERIALIZER)
    headers = values.get(HEADERS)
    return Message(
        values.get(ID) or entry_id,
        values.get(BODY, ""),
        receipt,
        int(serializer) if serializer is not None else None,
        values.get(MANIFEST),
        json.loads(headers) if headers else {},
        failed + 1 if receipt is not None else (failed or None),
        values.get(GROUP_ID),
        values.get(DEDUPLICATION_ID),
    )


def receive_answer(reply: str) -> list[Any]:
    """A receive script's answer, which it writes as one JSON array (see
    ``scripts.RECEIVE``)."""
    answer: list[Any] = json.loads(reply)
    return answer


def received(queue: str, lease: float, deliveries: Sequence[Any]) -> list[Message]:
    """The messages of a receive script's deliveries (``[id, delivered, failed, fields]``)."""
    return [
        to_message(
            str(entry_id),
            fields,
            Receipt(queue, str(entry_id), int(delivered), lease),
            int(failed),
        )
        for entry_id, delivered, failed, fields in deliveries
    ]


__all__ = [
    "BODY",
    "DEDUPLICATION_ID",
    "GROUP_ID",
    "HEADERS",
    "ID",
    "MANIFEST",
    "SERIALIZER",
    "Receipt",
    "encode_headers",
    "publish_arguments",
    "receive_answer",
    "received",
    "to_fields",
    "to_message",
]
