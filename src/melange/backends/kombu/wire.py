"""How a :class:`~melange.models.Message` travels through any kombu transport.

The envelope is the one :mod:`melange.backends.amqp` decides for every AMQP backend, so that
on AMQP this backend and the RabbitMQ backend read what the other published. Only the content
properties differ: ``content_type="application/octet-stream"`` and
``content_encoding="binary"``, so that kombu never re-serializes the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from melange.backends.amqp import encode_body, header_text, properties_fields, read_envelope
from melange.models import Message

CONTENT_TYPE = "application/octet-stream"
CONTENT_ENCODING = "binary"


@dataclass(frozen=True)
class Receipt:
    """What a received message needs to be settled.

    Attributes:
        queue: The queue it came from.
        delivery_tag: The transport's tag of this delivery.
        generation: Which connection of the backend received it: a message can only be
            settled on that one (after a reconnection the broker delivers it again).
        lease: The queue's visibility timeout in seconds, where the transport has one.
    """

    queue: str
    delivery_tag: Any
    generation: int
    lease: float | None


class Outgoing(NamedTuple):
    """A message as kombu's ``Channel.prepare_message`` takes it, its content type and
    encoding being :data:`CONTENT_TYPE` and :data:`CONTENT_ENCODING`."""

    body: bytes
    #: The AMQP headers table.
    headers: dict[str, Any]
    #: The other properties: ``message_id``, ``delivery_mode``, ``timestamp`` and, when
    #: there is one, ``correlation_id``. A transport may write into the dict it is given
    #: (kombu's virtual ones do): each publish takes a copy.
    properties: dict[str, Any]


def publish_arguments(
    message: Message,
    *,
    deliveries: int = 0,
    extra_headers: Mapping[str, str] | None = None,
) -> Outgoing:
    """What is published for ``message``; ``deliveries`` is the failed attempts recorded
    for it so far."""
    properties = properties_fields(message, deliveries=deliveries, extra_headers=extra_headers)
    headers = properties.pop("headers")
    del properties["content_encoding"]
    if properties["correlation_id"] is None:
        del properties["correlation_id"]
    return Outgoing(encode_body(message.content), headers, properties)


def from_delivery(delivered: Any, receipt: Receipt | None) -> Message:
    """Rebuild the envelope of a message a transport delivered (kombu's message object or
    py-amqp's: only ``body``, ``headers`` and ``properties`` are read); without a
    ``receipt``, a peeked copy."""
    message_id = (delivered.properties or {}).get("message_id")
    return read_envelope(
        delivered.headers or {},
        delivered.body,
        "" if message_id is None else header_text(message_id),
        receipt,
        peeked=receipt is None,
    )


__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "Outgoing",
    "Receipt",
    "from_delivery",
    "publish_arguments",
]
