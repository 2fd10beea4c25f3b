"""How a :class:`~melange.models.Message` travels as a NATS JetStream message.

- payload: the serialized content, UTF-8 encoded (``surrogateescape``: undecodable bodies
  come back byte for byte).
- headers: every Melange header (``correlation_id``, ``causation_id``, ``published_at`` and
  the publisher's own), plus ``melange_message_id``, ``manifest``, ``serializer_id`` and
  ``melange_group_id`` (the message group id, when one was given). ``Nats-Msg-Id`` carries
  the deduplication id, which JetStream uses to drop a second publish of the same message
  within the stream's duplicate window.

NATS header lines are ``Name: Value`` in ASCII, and the client strips a value's surrounding
blanks, so names and values are percent-encoded (printable ASCII other than ``%`` and the
space passes unchanged). Headers whose names start with ``Nats-`` belong to the server and
are not passed on to consumers.

``attempt`` is JetStream's delivery count (``num_delivered``): like SQS's receive count, it
also counts deliveries that ran no handler (a release, an expired lease, a crashed receiver).

A message read from a stream through the JetStream API, without receiving it, comes with its
header block and payload in base64 (:func:`stored_message`).
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from melange.models import FAILURE_ATTEMPTS, FAILURE_QUEUE, FAILURE_REASON, Message

MESSAGE_ID_HEADER = "melange_message_id"
MANIFEST_HEADER = "manifest"
SERIALIZER_HEADER = "serializer_id"
GROUP_HEADER = "melange_group_id"
#: JetStream's deduplication header.
DEDUPLICATION_HEADER = "Nats-Msg-Id"

_ENVELOPE_HEADERS = frozenset({MESSAGE_ID_HEADER, MANIFEST_HEADER, SERIALIZER_HEADER, GROUP_HEADER})
# Printable ASCII but the escape character and the blank (stripped by the client).
_SAFE_VALUE = "".join(c for c in string.printable if c not in "% \t\n\r\x0b\x0c")
_SAFE_NAME = string.ascii_letters + string.digits + "_-."
# What quote() would change: most names and values need no encoding, and a search is
# cheaper than quote() on every header of every message.
_UNSAFE_VALUE = re.compile(f"[^{re.escape(_SAFE_VALUE)}]")
_UNSAFE_NAME = re.compile(f"[^{re.escape(_SAFE_NAME)}]")


def encode_body(content: str) -> bytes:
    """The payload bytes of ``content``."""
    return content.encode("utf-8", errors="surrogateescape")


def decode_body(body: bytes) -> str:
    """The content string of a payload (see :func:`encode_body`)."""
    return body.decode("utf-8", errors="surrogateescape")


def _name(name: str) -> str:
    return quote(name, safe=_SAFE_NAME) if _UNSAFE_NAME.search(name) else name


def _value(value: str) -> str:
    return quote(value, safe=_SAFE_VALUE) if _UNSAFE_VALUE.search(value) else value


def encode_headers(
    message: Message, extra_headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The NATS headers of ``message``, with ``extra_headers`` added (dead-letter reasons)."""
    headers = {
        _name(key): _value(value)
        for key, value in message.headers.items()
        if not key.lower().startswith("nats-")
    }
    if extra_headers:
        headers.update({_name(k): _value(v) for k, v in extra_headers.items()})
    headers[MESSAGE_ID_HEADER] = _value(message.message_id)
    if message.manifest is not None:
        headers[MANIFEST_HEADER] = _value(message.manifest)
    if message.serializer_id is not None:
        headers[SERIALIZER_HEADER] = str(int(message.serializer_id))
    if message.group_id is not None:
        headers[GROUP_HEADER] = _value(message.group_id)
    if message.deduplication_id:
        headers[DEDUPLICATION_HEADER] = _value(message.deduplication_id)
    return headers


def manifest_of(headers: Mapping[str, str] | None) -> str | None:
    """The manifest a message's NATS headers carry, or ``None``."""
    raw = (headers or {}).get(MANIFEST_HEADER)
    return unquote(raw) if raw is not None else None


def decode_message(
    payload: bytes, headers: Mapping[str, str] | None, attempt: int | None, receipt: Any
) -> Message:
    """Rebuild the envelope of a delivered message; ``receipt`` goes to ``metadata``."""
    raw = headers or {}
    kept: dict[str, str] = {}
    for key, value in raw.items():
        if key in _ENVELOPE_HEADERS or key.lower().startswith("nats-"):
            continue
        kept[unquote(key)] = unquote(value)
    serializer = raw.get(SERIALIZER_HEADER)
    group = raw.get(GROUP_HEADER)
    dedup = raw.get(DEDUPLICATION_HEADER)
    message_id = raw.get(MESSAGE_ID_HEADER)
    return Message(
        message_id=unquote(message_id) if message_id else None,
        content=decode_body(payload),
        metadata=receipt,
        serializer_id=int(serializer) if serializer and serializer.isdigit() else None,
        manifest=manifest_of(raw),
        headers=kept,
        attempt=attempt,
        group_id=unquote(group) if group is not None else None,
        deduplication_id=unquote(dedup) if dedup is not None else None,
    )


def stored_message(raw: Any) -> Message:
    """A message read from a stream without receiving it (no receipt, no attempt)."""
    headers: dict[str, str] = {}
    if raw.hdrs:
        block = base64.b64decode(raw.hdrs).decode("utf-8", "replace")
        for line in block.split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip()] = value.strip()
    payload = base64.b64decode(raw.data) if raw.data else b""
    return decode_message(payload, headers, None, None)


def backstop_headers(queue: str, deliveries: int) -> dict[str, str]:
    """The failure headers of a message the backend dead-letters by itself: it was delivered
    more often than the queue's ``max_receive_count`` allows."""
    return {
        FAILURE_REASON: f"max receive count exceeded: delivered {deliveries} times by NATS",
        FAILURE_QUEUE: queue,
        FAILURE_ATTEMPTS: str(deliveries),
    }


__all__ = [
    "DEDUPLICATION_HEADER",
    "GROUP_HEADER",
    "MANIFEST_HEADER",
    "MESSAGE_ID_HEADER",
    "SERIALIZER_HEADER",
    "backstop_headers",
    "decode_body",
    "decode_message",
    "encode_body",
    "encode_headers",
    "manifest_of",
    "stored_message",
]
