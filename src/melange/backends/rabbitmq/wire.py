"""How a :class:`~melange.models.Message` travels as an AMQP 0-9-1 message.

- body: the serialized content, UTF-8 encoded.
- properties: ``message_id``, ``correlation_id`` (copied from the header of that name, for AMQP
  tooling), ``delivery_mode=2`` (persistent), ``timestamp`` (publish time, whole seconds),
  ``content_encoding="utf-8"``.
- headers table: every Melange header (``correlation_id``, ``causation_id``, ``published_at``
  and the publisher's own), plus ``manifest`` (string) and ``serializer_id`` (integer), which
  topic exchanges route on, and ``melange_deliveries``, the failed attempts the message had
  before this copy was published (set when a message is handed back for a retry).
  ``melange_group_id`` carries the message group id when one was given.

Headers whose names start with ``x-`` belong to the broker (``x-death``,
``x-delivery-count``...) and are not passed on to consumers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pika

from melange.models import CORRELATION_ID, FAILURE_QUEUE, FAILURE_REASON, Message

MANIFEST_HEADER = "manifest"
SERIALIZER_HEADER = "serializer_id"
DELIVERIES_HEADER = "melange_deliveries"
GROUP_HEADER = "melange_group_id"

_ENVELOPE_HEADERS = frozenset({MANIFEST_HEADER, SERIALIZER_HEADER, DELIVERIES_HEADER, GROUP_HEADER})


def encode_body(content: str) -> bytes:
    """The body bytes; ``surrogateescape`` returns undecodable bodies byte for byte."""
    return content.encode("utf-8", errors="surrogateescape")


def decode_body(body: bytes) -> str:
    """The content string; bytes that are not UTF-8 survive as surrogates (see above)."""
    return body.decode("utf-8", errors="surrogateescape")


def properties_fields(
    message: Message,
    *,
    deliveries: int = 0,
    extra_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The AMQP properties of ``message`` as plain data, whatever the client library.

    ``deliveries`` is the failed attempts recorded for it so far; ``timestamp`` is in whole
    seconds.
    """
    headers: dict[str, Any] = {
        key: value for key, value in message.headers.items() if not key.startswith("x-")
    }
    if extra_headers:
        headers.update(extra_headers)
    if message.manifest is not None:
        headers[MANIFEST_HEADER] = message.manifest
    if message.serializer_id is not None:
        headers[SERIALIZER_HEADER] = int(message.serializer_id)
    if deliveries:
        headers[DELIVERIES_HEADER] = int(deliveries)
    if message.group_id is not None:
        headers[GROUP_HEADER] = message.group_id
    correlation = message.headers.get(CORRELATION_ID)
    return {
        "message_id": message.message_id,
        "correlation_id": correlation if correlation and len(correlation) <= 255 else None,
        "delivery_mode": 2,
        "timestamp": int(time.time()),
        "content_encoding": "utf-8",
        "headers": headers,
    }


def to_properties(
    message: Message,
    *,
    deliveries: int = 0,
    extra_headers: Mapping[str, str] | None = None,
) -> pika.BasicProperties:
    """pika properties for ``message``; ``deliveries`` is its delivery count so far."""
    return pika.BasicProperties(
        **properties_fields(message, deliveries=deliveries, extra_headers=extra_headers)
    )


def from_delivery(properties: Any, body: bytes, receipt: Any) -> Message:
    """Rebuild the envelope of a delivered message.

    ``properties`` is the client's properties object (pika's or aiormq's): only its
    ``headers`` and ``message_id`` are read.

    ``attempt`` is one more than the failed attempts recorded in ``melange_deliveries``. The
    broker's own count (``x-delivery-count``) is not used: it also counts messages returned
    unprocessed by a lost connection, a crash or a stop, which are not attempts.
    """
    raw: Mapping[str, Any] = properties.headers or {}
    headers: dict[str, str] = {}
    for key, value in raw.items():
        if key.startswith("x-") or key in _ENVELOPE_HEADERS:
            continue
        headers[key] = _text(value)
    _describe_broker_dead_letter(raw.get("x-death"), headers)
    manifest = raw.get(MANIFEST_HEADER)
    serializer = raw.get(SERIALIZER_HEADER)
    attempt = _int(raw.get(DELIVERIES_HEADER), 0) + 1
    group = raw.get(GROUP_HEADER)
    serializer_id = _int(serializer, None)
    if serializer_id is None and serializer is not None:
        # Kept for the dispatcher to say what was wrong with it.
        headers[SERIALIZER_HEADER] = _text(serializer)
    return Message(
        message_id=properties.message_id,
        content=decode_body(body),
        metadata=receipt,
        serializer_id=serializer_id,
        manifest=_text(manifest) if manifest is not None else None,
        headers=headers,
        attempt=attempt,
        group_id=_text(group) if group is not None else None,
    )


#: ``x-death`` reasons that mean the broker dead-lettered the message (``expired`` is how
#: retry queues send messages back, not a failure).
_FAILURE_DEATHS = frozenset({"delivery_limit", "rejected", "maxlen"})


def _describe_broker_dead_letter(deaths: Any, headers: dict[str, str]) -> None:
    """Give a message the broker dead-lettered the failure headers Melange's own carry."""
    if FAILURE_REASON in headers or not isinstance(deaths, list):
        return
    for death in deaths:
        if isinstance(death, Mapping) and death.get("reason") in _FAILURE_DEATHS:
            queue = _text(death.get("queue", ""))
            headers[FAILURE_REASON] = f"dead-lettered by RabbitMQ: {death['reason']}"
            headers.setdefault(FAILURE_QUEUE, queue)
            return


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _int(value: Any, default: int | None) -> Any:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes):
        try:
            return int(value)
        except ValueError:
            return default
    return default
