"""Messages as Kafka records, and back.

A record's value is the body (UTF-8), its key the message's FIFO group (``message_group_id``:
a group's messages share a partition, so Kafka keeps their order), and its headers the
envelope: every Melange header under its own name, plus ``melange-id`` (message id),
``melange-serializer``, ``melange-manifest``, ``melange-group`` and ``melange-dedup`` where set.
A retry record (a failed message published again to its queue's topic) also carries
``melange-failed`` (its failed attempts) and ``melange-not-before`` (when it is due).
A dead-lettered copy carries the failure headers of the other backends
(``melange_failure_reason``, ``melange_failure_queue``...).

A received message carries a :class:`Receipt` in its ``metadata``: where the record is (topic,
partition, offset) and which assignment of that partition it came through, which is what a
settlement checks to know the consumer still owns it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from melange.models import FAILURE_QUEUE, Message

#: Where a serializer id that is not a number is kept (the dispatcher reports it from there).
SERIALIZER_ID_HEADER = "serializer_id"

#: Envelope headers; every other header is the message's own.
MESSAGE_ID_HEADER = "melange-id"
SERIALIZER_HEADER = "melange-serializer"
MANIFEST_HEADER = "melange-manifest"
GROUP_HEADER = "melange-group"
DEDUPLICATION_HEADER = "melange-dedup"
#: On a retry record (see :func:`retry_headers`): the failed attempts before it, and the
#: time (Unix milliseconds) before which it is not handed out.
FAILED_HEADER = "melange-failed"
NOT_BEFORE_HEADER = "melange-not-before"
_ENVELOPE = frozenset(
    {
        MESSAGE_ID_HEADER,
        SERIALIZER_HEADER,
        MANIFEST_HEADER,
        GROUP_HEADER,
        DEDUPLICATION_HEADER,
        FAILED_HEADER,
        NOT_BEFORE_HEADER,
    }
)

#: A record's headers as confluent-kafka takes them.
RecordHeaders = list[tuple[str, str | bytes | None]]


class Receipt(NamedTuple):
    """What a received message needs to be settled.

    Attributes:
        queue: The queue it was received from.
        topic: The Kafka topic of the record (the queue's own, or a subscribed topic).
        partition: Its partition.
        offset: Its offset.
        assignment: Which assignment of the partition to this consumer it came through: once
            the partition was taken away (a rebalance), settling it does nothing, since the
            partition's new owner delivers it again.
        failed: How many attempts at it failed before this delivery.
    """

    queue: str
    topic: str
    partition: int
    offset: int
    assignment: int
    failed: int


def encode_headers(message: Message, extra: Mapping[str, str] | None = None) -> RecordHeaders:
    """The record headers of ``message`` (with ``extra`` headers added)."""
    headers: RecordHeaders = [(MESSAGE_ID_HEADER, message.message_id.encode())]
    if message.serializer_id is not None:
        headers.append((SERIALIZER_HEADER, str(message.serializer_id).encode()))
    if message.manifest is not None:
        headers.append((MANIFEST_HEADER, message.manifest.encode()))
    if message.group_id is not None:
        headers.append((GROUP_HEADER, message.group_id.encode()))
    if message.deduplication_id is not None:
        headers.append((DEDUPLICATION_HEADER, message.deduplication_id.encode()))
    merged = dict(message.headers)
    if extra:
        merged.update(extra)
    headers.extend((name, value.encode()) for name, value in merged.items())
    return headers


def retry_headers(failed: int, not_before: float) -> dict[str, str]:
    """The headers of a retry record: ``failed`` attempts so far, due at ``not_before``
    (Unix time)."""
    return {FAILED_HEADER: str(failed), NOT_BEFORE_HEADER: str(round(not_before * 1000))}


def retry_state(
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> tuple[int, float]:
    """The failed attempts a record carries and when it is due (Unix time; 0: at once)."""
    failed, due = 0, 0.0
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for name, raw in pairs:
        if name not in (FAILED_HEADER, NOT_BEFORE_HEADER):
            continue
        text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else raw or ""
        if not text.isdigit():
            continue  # not written by Melange: ignored rather than trusted
        if name == FAILED_HEADER:
            failed = int(text)
        else:
            due = int(text) / 1000
    return failed, due


def record_key(message: Message) -> bytes | None:
    """The record key: the FIFO group, so a group's messages share a partition."""
    return message.group_id.encode() if message.group_id is not None else None


def encode_body(message: Message) -> bytes:
    """The record value."""
    return message.content.encode("utf-8")


def decode_message(
    value: bytes | None,
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
    receipt: Receipt | None,
) -> Message:
    """The message a record holds. A received one (with a ``receipt``) is on the attempt
    after the failed ones; a peeked copy has ``attempt`` ``None``."""
    envelope: dict[str, str] = {}
    kept: dict[str, str] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for name, raw in pairs:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw or ""
        (envelope if name in _ENVELOPE else kept)[name] = text
    serializer = envelope.get(SERIALIZER_HEADER)
    if serializer is not None and not serializer.isdigit():
        # Kept for the dispatcher to say what is wrong with it (another producer's record).
        kept[SERIALIZER_ID_HEADER] = serializer
    return Message(
        message_id=envelope.get(MESSAGE_ID_HEADER),
        content=(value or b"").decode("utf-8", errors="replace"),
        metadata=receipt,
        serializer_id=int(serializer) if serializer and serializer.isdigit() else None,
        manifest=envelope.get(MANIFEST_HEADER),
        headers=kept,
        attempt=receipt.failed + 1 if receipt is not None else None,
        group_id=envelope.get(GROUP_HEADER),
        deduplication_id=envelope.get(DEDUPLICATION_HEADER),
    )


def received(
    queue: str,
    topic: str,
    partition: int,
    offset: int,
    assignment: int,
    value: bytes | None,
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> tuple[Message, float]:
    """The message of a record a queue's consumer fetched, and when it may be handed out: a
    ``time.monotonic()`` value for a retry record not due yet, else 0 (at once)."""
    failed, not_before = retry_state(headers)
    receipt = Receipt(queue, topic, partition, offset, assignment, failed)
    message = decode_message(value, headers, receipt)
    if not not_before:
        return message, 0.0
    wait = not_before - time.time()
    return message, time.monotonic() + wait if wait > 0 else 0.0


def dead_letter_headers(message: Message, queue: str, headers: Mapping[str, str]) -> RecordHeaders:
    """The headers of the dead-lettered copy: the original's, the failure headers, and the
    queue it failed in."""
    extra = dict(headers)
    extra.setdefault(FAILURE_QUEUE, queue)
    return encode_headers(message, extra)


def receipt_of(message: Message) -> Receipt:
    """The receipt of a message a Kafka backend delivered."""
    receipt: Any = message.metadata
    if not isinstance(receipt, Receipt):
        raise ValueError(f"{message!r} was not received from a Kafka backend")
    return receipt


__all__ = [
    "DEDUPLICATION_HEADER",
    "FAILED_HEADER",
    "GROUP_HEADER",
    "MANIFEST_HEADER",
    "MESSAGE_ID_HEADER",
    "NOT_BEFORE_HEADER",
    "SERIALIZER_HEADER",
    "Receipt",
    "RecordHeaders",
    "dead_letter_headers",
    "decode_message",
    "encode_body",
    "encode_headers",
    "receipt_of",
    "received",
    "record_key",
    "retry_headers",
    "retry_state",
]
