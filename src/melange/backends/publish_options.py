"""The keyword arguments of ``publish_to_queue``/``publish_to_topic`` every backend reads the
same way.

- ``message_group_id`` and ``message_deduplication_id``: the 7.2.0 backend API passed the FIFO
  keys of a message next to it; they become the message's ``group_id`` and
  ``deduplication_id`` (which is how publishers pass them).
- ``delay_seconds``: hold the message back that long before any consumer can receive it. A
  finite number of seconds, at least 0; each backend says in its capabilities
  (``delayed_publish``, ``delayed_topic_publish``, ``max_publish_delay``) whether and how far
  it can. FIFO queues take no per-message delay on any backend, as on SQS: a group's order
  is its publish order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from melange.exceptions import ConfigurationError
from melange.models import Message

#: The keyword that delays a message on publish.
DELAY_SECONDS = "delay_seconds"


def apply_fifo_keywords(messages: Sequence[Message], kwargs: Mapping[str, Any]) -> None:
    """Give ``messages`` the ``message_group_id``/``message_deduplication_id`` passed as
    keywords (a keyword given replaces what the message had).

    One deduplication id for several messages would keep only the first: a batch must carry
    one per message, on each :class:`~melange.models.Message`.
    """
    group = kwargs.get("message_group_id")
    dedup = kwargs.get("message_deduplication_id")
    if group is None and dedup is None:
        return
    for name, value in (("message_group_id", group), ("message_deduplication_id", dedup)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
    if dedup is not None and len(messages) > 1:
        raise ConfigurationError(
            "message_deduplication_id names one message: a batch would keep only its first; "
            "set deduplication_id on each message instead"
        )
    for message in messages:
        if group is not None:
            message.group_id = group
        if dedup is not None:
            message.deduplication_id = dedup


def publish_delay(
    kwargs: Mapping[str, Any], *, limit: float | None = None, backend: str = "this backend"
) -> float | None:
    """The ``delay_seconds`` keyword, checked: ``None`` for no delay (absent or 0).

    Raises ``ConfigurationError`` for anything but a finite number of seconds from 0 to
    ``limit``.
    """
    delay = kwargs.get(DELAY_SECONDS)
    if delay is None:
        return None
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not math.isfinite(delay)
        or delay < 0
    ):
        raise ConfigurationError(
            f"delay_seconds must be a finite number of seconds, at least 0; got {delay!r}"
        )
    if limit is not None and delay > limit:
        raise ConfigurationError(
            f"delay_seconds={delay!r} is more than {backend} can delay a message "
            f"({limit:g} seconds at most)"
        )
    return float(delay) if delay > 0 else None


def fifo_delay_refused(queue_name: str) -> ConfigurationError:
    """The error for a per-message delay on a FIFO queue."""
    return ConfigurationError(
        f"queue {queue_name!r} is FIFO, and FIFO queues take no per-message delay_seconds (as "
        "on SQS): a group's messages are delivered in publish order. Declare the queue with "
        "delay_seconds to delay every message, or publish without it"
    )


def delay_refused(backend: str, what: str, hint: str = "") -> ConfigurationError:
    """The error of a backend that cannot delay ``what`` (e.g. ``"a topic message"``)."""
    return ConfigurationError(f"{backend} cannot delay {what}: publish without delay_seconds{hint}")


def apply_undelayed_publish_keywords(
    messages: Sequence[Message], kwargs: Mapping[str, Any], *, backend: str
) -> None:
    """The publish keywords for a backend that cannot hold a message back: the FIFO ones
    applied (:func:`apply_fifo_keywords`), ``delay_seconds`` other than 0 refused naming
    ``backend`` (``"the NATS backend"``)."""
    apply_fifo_keywords(messages, kwargs)
    if publish_delay(kwargs, backend=backend) is not None:
        raise delay_refused(backend, "a message")


__all__ = [
    "DELAY_SECONDS",
    "apply_fifo_keywords",
    "apply_undelayed_publish_keywords",
    "delay_refused",
    "fifo_delay_refused",
    "publish_delay",
]
