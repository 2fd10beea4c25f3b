"""How a :class:`~melange.models.Message` travels as an AMQP 0-9-1 message, with pika.

The envelope (body, properties, headers table) is the one :mod:`melange.backends.amqp`
decides for every AMQP backend, so that the kombu backend reads what this one publishes and
the other way round; here it is only given to and read from pika's and aiormq's objects, with
``content_encoding="utf-8"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pika

from melange.backends.amqp import encode_body as encode_body  # what publishers send
from melange.backends.amqp import properties_fields, read_envelope
from melange.models import Message


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
    """Rebuild the envelope of a delivered message (see
    :func:`~melange.backends.amqp.read_envelope`).

    ``properties`` is the client's properties object (pika's or aiormq's): only its
    ``headers`` and ``message_id`` are read.
    """
    return read_envelope(properties.headers or {}, body, properties.message_id, receipt)


__all__ = ["encode_body", "from_delivery", "to_properties"]
