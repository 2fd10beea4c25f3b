"""The message envelope that every backend carries the same way.

A :class:`Message` is what travels between a publisher and a dispatcher: the serialized
content plus what a consumer needs to decode and trace it. Backends map the fields onto their
native message attributes; see each backend's documentation for the wire format.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from typing import Any

#: Header names that Melange sets on every published message.
CORRELATION_ID = "correlation_id"
CAUSATION_ID = "causation_id"
PUBLISHED_AT = "published_at"

#: Header names a dead-lettered message gains (see :mod:`melange.policy`).
FAILURE_REASON = "melange_failure_reason"
FAILURE_EXCEPTION = "melange_failure_exception"
FAILURE_ATTEMPTS = "melange_failure_attempts"
FAILURE_CONSUMER = "melange_failure_consumer"
FAILURE_QUEUE = "melange_failure_queue"

#: The header of a message whose payload is held in a payload store (see
#: :mod:`melange.claimcheck`): it carries the reference, and the message's own body and
#: serializer id (:data:`CLAIM_CHECK_SERIALIZER_ID`) are placeholders no serializer decodes.
CLAIM_CHECK = "melange_claim_check"
#: The serializer id a claim-checked message is sent with: reserved, so that a consumer
#: unaware of claim checks (any version) dead-letters it as an unknown serializer rather than
#: decoding the placeholder body as the payload.
CLAIM_CHECK_SERIALIZER_ID = 990_001


class _IdSource:
    # A generator seeded from the OS: ids need uniqueness, not secrecy, and unlike
    # os.urandom it does not release the GIL on every message. Reseeded in forked children
    # so that two processes never share a sequence.
    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.bits = random.Random(os.urandom(32)).getrandbits


_ids = _IdSource()


def new_message_id() -> str:
    """A fresh, globally unique message id: 128 random bits as 32 hex digits (a UUID4's size)."""
    return f"{_ids.bits(128):032x}"


class Message:
    """A serialized message and its envelope.

    Attributes:
        message_id: The message's id, always set. Backends that assign their own id
            (SQS) overwrite the publisher's on receipt; the dedup cache keys on it.
        content: The serialized body, as produced by a serializer.
        metadata: What the backend needs to acknowledge the message (a receipt handle,
            a delivery tag); ``None`` before it was received. Opaque to everyone else.
        serializer_id: The identifier of the serializer that produced ``content``.
        manifest: The serializer's manifest for ``content`` (e.g. ``"json"`` or a class name).
        headers: String headers: correlation id, causation id, published-at timestamp, and
            anything the publisher added.
        attempt: Which attempt at handling the message this delivery is: one more than the
            attempts that failed (``nack``). Deliveries that ran no handler (a release, a lost
            connection, a crashed receiver) do not count, except on SQS, where it is the
            broker's receive count. ``None`` where the backend does not know it.
        group_id: Ordering key for FIFO queues (SQS ``MessageGroupId``).
        deduplication_id: Broker-side deduplication id for FIFO queues.
    """

    __slots__ = (
        "attempt",
        "content",
        "deduplication_id",
        "group_id",
        "headers",
        "manifest",
        "message_id",
        "metadata",
        "serializer_id",
    )

    def __init__(
        self,
        message_id: str | None,
        content: str,
        metadata: Any = None,
        serializer_id: int | None = None,
        manifest: str | None = None,
        headers: Mapping[str, str] | None = None,
        attempt: int | None = None,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> None:
        self.message_id: str = message_id or new_message_id()
        self.content = content
        self.metadata = metadata
        self.serializer_id = serializer_id
        self.manifest = manifest
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.attempt = attempt
        self.group_id = group_id
        self.deduplication_id = deduplication_id

    @staticmethod
    def create(
        content: str,
        manifest: str | None,
        serializer_id: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Build a message to publish: a fresh id and a published-at timestamp."""
        merged = {PUBLISHED_AT: f"{time.time():.6f}"}
        if headers:
            merged.update(headers)
        return Message(None, content, None, serializer_id, manifest, merged)

    def get_message_manifest(self) -> str | None:
        """The manifest (kept for code written against 7.2.0)."""
        return self.manifest

    @property
    def correlation_id(self) -> str | None:
        """The correlation id header, if set."""
        return self.headers.get(CORRELATION_ID)

    @property
    def causation_id(self) -> str | None:
        """The causation id header, if set."""
        return self.headers.get(CAUSATION_ID)

    @property
    def published_at(self) -> float | None:
        """The publish time as a Unix timestamp, if the publisher set it."""
        value = self.headers.get(PUBLISHED_AT)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def __repr__(self) -> str:
        return (
            f"Message(message_id={self.message_id!r}, manifest={self.manifest!r}, "
            f"serializer_id={self.serializer_id!r}, attempt={self.attempt!r}, "
            f"content={self.content[:60]!r}{'...' if len(self.content) > 60 else ''})"
        )


class QueueWrapper:
    """A backend's handle on a queue; ``unwrapped_obj`` is the native object (URL, name...)."""

    __slots__ = ("name", "unwrapped_obj")

    def __init__(self, obj: Any, name: str | None = None) -> None:
        self.unwrapped_obj = obj
        self.name: str = name if name is not None else str(obj)

    def __repr__(self) -> str:
        return f"QueueWrapper({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QueueWrapper) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("queue", self.name))


class TopicWrapper:
    """A backend's handle on a topic; ``unwrapped_obj`` is the native object (ARN, exchange...)."""

    __slots__ = ("name", "unwrapped_obj")

    def __init__(self, obj: Any, name: str | None = None) -> None:
        self.unwrapped_obj = obj
        self.name: str = name if name is not None else str(obj)

    def __repr__(self) -> str:
        return f"TopicWrapper({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicWrapper) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("topic", self.name))
