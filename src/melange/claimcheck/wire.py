"""The wire format of a claim-checked message.

A message whose payload went to a payload store travels as::

    body           "melange claim check: ..."  (a placeholder, never a payload)
    serializer id  990001                      (CLAIM_CHECK_SERIALIZER_ID: reserved)
    manifest       the payload's own           (subscription filters keep working)
    headers        the message's own, plus
    melange_claim_check   {"v":1,"key":"20260101-3f2a...","size":5242880,
                           "sha256":"9b1c...","serializer":1,"remove":"ack"}

``key`` names the payload in the store, ``size`` and ``sha256`` are the stored bytes' (the
serialized body, UTF-8), ``serializer`` is the id of the serializer that made it, and
``remove`` says when the payload may go: ``"ack"`` (a queue publish: one copy, removed once
it is acknowledged) or ``"expire"`` (a topic publish: as many copies as subscribed queues,
removed by the claim check's lifetime). A consumer without a claim check never decodes the
placeholder: this version dead-letters it naming the header, and a reader that does not know
the header finds a serializer id no serializer has, and refuses to decode it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from melange.claimcheck.store import InvalidReferenceError, PayloadUnreadableError, check_key

#: The version of the reference format this code writes and reads.
VERSION = 1
#: The body a claim-checked message is sent with.
PLACEHOLDER = (
    "melange claim check: the payload of this message is held in a payload store; "
    "its reference is the melange_claim_check header"
)

#: When a stored payload may be removed: once acknowledged, or only by its lifetime.
Removal = Literal["ack", "expire"]


@dataclass(frozen=True, slots=True)
class Reference:
    """Where a message's payload is, and how to check it."""

    key: str
    size: int
    sha256: str
    serializer_id: int | None
    remove: Removal

    @classmethod
    def of(cls, key: str, data: bytes, serializer_id: int | None, remove: Removal) -> Reference:
        """The reference to ``data`` stored under ``key``."""
        return cls(key, len(data), hashlib.sha256(data).hexdigest(), serializer_id, remove)

    def encode(self) -> str:
        """The header value."""
        return json.dumps(
            {
                "v": VERSION,
                "key": self.key,
                "size": self.size,
                "sha256": self.sha256,
                "serializer": self.serializer_id,
                "remove": self.remove,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> Reference:
        """The reference in a header value; :class:`InvalidReferenceError` if it is not one
        this version can read."""
        try:
            fields = json.loads(text)
        except (TypeError, ValueError):
            raise InvalidReferenceError(
                f"claim check header {str(text)[:40]!r} is not a JSON reference"
            ) from None
        if not isinstance(fields, dict) or fields.get("v") != VERSION:
            version = fields.get("v") if isinstance(fields, dict) else None
            raise InvalidReferenceError(
                f"claim check reference version {str(version)[:10]!r} is not {VERSION}, "
                "the one this Melange reads"
            )
        key, size, digest = fields.get("key"), fields.get("size"), fields.get("sha256")
        serializer, remove = fields.get("serializer"), fields.get("remove")
        if (
            not isinstance(size, int)
            or size < 0
            or not isinstance(digest, str)
            or not (serializer is None or isinstance(serializer, int))
            or remove not in ("ack", "expire")
        ):
            raise InvalidReferenceError(
                "claim check reference lacks a valid size, sha256, serializer or remove field"
            )
        return cls(check_key(key), size, digest, serializer, remove)

    def verify(self, data: bytes) -> None:
        """Raise :class:`PayloadUnreadableError` unless ``data`` is the payload referred to."""
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.sha256:
            raise PayloadUnreadableError(
                f"payload {self.key!r} does not match its reference ({len(data)} bytes where "
                f"{self.size} were stored, or another SHA-256 digest)"
            )


__all__ = ["PLACEHOLDER", "VERSION", "Reference", "Removal"]
