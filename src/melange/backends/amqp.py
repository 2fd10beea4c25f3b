"""What the RabbitMQ and kombu backends decide alike about AMQP 0-9-1 messages and queues.

Either backend reads what the other published on the same broker, so the envelope is decided
here once, without any client library (the kombu backend runs without pika):

- body: the serialized content, UTF-8 encoded (:func:`encode_body`).
- properties: ``message_id``, ``correlation_id`` (copied from the header of that name, for
  AMQP tooling), ``delivery_mode=2`` (persistent), ``timestamp`` (publish time, whole seconds)
  and the backend's ``content_encoding`` (see :func:`properties_fields`).
- headers table: every Melange header (``correlation_id``, ``causation_id``, ``published_at``
  and the publisher's own), plus ``manifest`` (string) and ``serializer_id`` (integer), which
  topic exchanges route on, and ``melange_deliveries``, the failed attempts the message had
  before this copy was published (set when a message is handed back for a retry).
  ``melange_group_id`` carries the message group id when one was given.

Headers whose names start with ``x-`` belong to the broker (``x-death``,
``x-delivery-count``...) and are not passed on to consumers.

Neither backend has FIFO queues: :func:`refuse_fifo_publish` and :func:`refuse_fifo_queue`
refuse what asks for them, in the same words.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from melange.exceptions import ConfigurationError
from melange.models import CORRELATION_ID, FAILURE_QUEUE, FAILURE_REASON, Message

MANIFEST_HEADER = "manifest"
SERIALIZER_HEADER = "serializer_id"
DELIVERIES_HEADER = "melange_deliveries"
GROUP_HEADER = "melange_group_id"

_ENVELOPE_HEADERS = frozenset({MANIFEST_HEADER, SERIALIZER_HEADER, DELIVERIES_HEADER, GROUP_HEADER})

#: Where the RabbitMQ backend suggests going for FIFO queues.
_FIFO_BACKENDS = "a backend whose capabilities say fifo=True (SQS, SQLite, in-memory)"


def encode_body(content: str) -> bytes:
    """The body bytes; ``surrogateescape`` returns undecodable bodies byte for byte."""
    return content.encode("utf-8", errors="surrogateescape")


def decode_body(body: bytes | str) -> str:
    """The content string; bytes that are not UTF-8 survive as surrogates (see above). A
    client that already decoded the body (kombu's virtual transports) gives it as it is."""
    if isinstance(body, str):
        return body
    return body.decode("utf-8", errors="surrogateescape")


def properties_fields(
    message: Message,
    *,
    deliveries: int = 0,
    extra_headers: Mapping[str, str] | None = None,
    content_encoding: str = "utf-8",
) -> dict[str, Any]:
    """The AMQP properties of ``message`` as plain data, whatever the client library.

    ``deliveries`` is the failed attempts recorded for it so far; ``timestamp`` is in whole
    seconds; ``correlation_id`` is ``None`` when there is none (or it is too long for AMQP).
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
        "content_encoding": content_encoding,
        "headers": headers,
    }


def read_envelope(
    raw: Mapping[str, Any],
    body: bytes | str,
    message_id: Any,
    metadata: Any,
    *,
    peeked: bool = False,
) -> Message:
    """Rebuild the envelope of a delivered message from its headers table ``raw``.

    ``attempt`` is one more than the failed attempts recorded in ``melange_deliveries``; a
    ``peeked`` copy (not received for processing) tells how many failed (``None``: none).
    The broker's own count (``x-delivery-count``) is not used: it also counts messages
    returned unprocessed by a lost connection, a crash or a stop, which are not attempts.
    """
    headers: dict[str, str] = {}
    for key, value in raw.items():
        if key.startswith("x-") or key in _ENVELOPE_HEADERS:
            continue
        headers[key] = header_text(value)
    _describe_broker_dead_letter(raw.get("x-death"), headers)
    manifest = raw.get(MANIFEST_HEADER)
    serializer = raw.get(SERIALIZER_HEADER)
    failed = _int(raw.get(DELIVERIES_HEADER), 0)
    group = raw.get(GROUP_HEADER)
    serializer_id = _int(serializer, None)
    if serializer_id is None and serializer is not None:
        # Kept for the dispatcher to say what was wrong with it.
        headers[SERIALIZER_HEADER] = header_text(serializer)
    return Message(
        message_id=message_id,
        content=decode_body(body),
        metadata=metadata,
        serializer_id=serializer_id,
        manifest=header_text(manifest) if manifest is not None else None,
        headers=headers,
        attempt=(failed or None) if peeked else failed + 1,
        group_id=header_text(group) if group is not None else None,
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
            queue = header_text(death.get("queue", ""))
            headers[FAILURE_REASON] = f"dead-lettered by RabbitMQ: {death['reason']}"
            headers.setdefault(FAILURE_QUEUE, queue)
            return


def refuse_fifo_publish(
    destination: str,
    messages: Sequence[Message],
    kwargs: Mapping[str, Any],
    *,
    backend: str,
) -> None:
    """A publish that asks for FIFO semantics (a ``.fifo`` queue, a group id, a deduplication
    id) is refused rather than delivered without them (``backend`` names the backend)."""
    asked = []
    if kwargs.get("message_group_id") or any(m.group_id is not None for m in messages):
        asked.append("message_group_id")
    if kwargs.get("message_deduplication_id") or any(
        m.deduplication_id is not None for m in messages
    ):
        asked.append("message_deduplication_id")
    if destination.endswith(".fifo"):
        asked.insert(0, "a .fifo name")
    if asked:
        raise ConfigurationError(
            f"{destination!r}: the {backend} backend has no FIFO queues (per-group order, "
            f"deduplication), so it refuses {' and '.join(asked)} rather than ignore them; "
            f"publish without them, or use {_FIFO_BACKENDS}"
        )


def refuse_fifo_queue(queue_name: str, options: Mapping[str, Any], *, backend: str) -> None:
    """A queue declared FIFO (``fifo=True`` or a ``.fifo`` name) is refused, not ignored."""
    if options.get("fifo") or queue_name.endswith(".fifo"):
        raise ConfigurationError(
            f"queue {queue_name!r}: the {backend} backend has no FIFO queues (per-group order, "
            "deduplication), so a .fifo name or fifo=True is refused rather than ignored; use "
            f"{_FIFO_BACKENDS}"
        )


def header_text(value: Any) -> str:
    """A header or property value as text (bytes decoded as UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _int(value: Any, default: Any) -> Any:
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


__all__ = [
    "DELIVERIES_HEADER",
    "GROUP_HEADER",
    "MANIFEST_HEADER",
    "SERIALIZER_HEADER",
    "decode_body",
    "encode_body",
    "header_text",
    "properties_fields",
    "read_envelope",
    "refuse_fifo_publish",
    "refuse_fifo_queue",
]
