"""Queues and topics on Redis: key names, queue options and the arguments of the scripts
that declare them, and the errors the scripts answer with.

A queue is a stream read through one consumer group, with its settings in a hash beside it;
a topic is a hash of subscriptions (queue -> manifest filter), and a publish to it adds the
message to every subscribed queue's stream in one script. The key of each is the backend's
prefix, a letter for the kind and the name (see :mod:`melange.backends.redis_streams.scripts`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from melange.backends.embedded_rules import check_filter_events, queue_options
from melange.backends.publish_options import apply_undelayed_publish_keywords
from melange.exceptions import (
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, TopicWrapper

#: The options ``declare_queue`` takes besides ``filter_events``.
QUEUE_OPTIONS = frozenset({"fifo", "visibility_timeout", "max_receive_count", "delay_seconds"})


@dataclass(frozen=True)
class Keys:
    """The key names under one prefix."""

    prefix: str

    def config(self, queue: str) -> str:
        """The hash of a queue's settings."""
        return f"{self.prefix}c:{queue}"

    def stream(self, queue: str) -> str:
        """A queue's stream."""
        return f"{self.prefix}s:{queue}"

    def attempts(self, queue: str) -> str:
        """The failed attempts of a queue's messages."""
        return f"{self.prefix}a:{queue}"

    def bell(self, queue: str) -> str:
        """The stream that rings when a queue's message becomes deliverable again."""
        return f"{self.prefix}b:{queue}"

    @property
    def queues(self) -> str:
        """The set of every queue's name."""
        return f"{self.prefix}queues"

    @property
    def topics(self) -> str:
        """The set of every topic's name."""
        return f"{self.prefix}topics"

    def subscriptions(self, topic: str) -> str:
        """The hash of a topic's subscriptions (queue -> filter)."""
        return f"{self.prefix}t:{topic}"


def declare_arguments(
    prefix: str,
    queue_name: str,
    topics: Sequence[TopicWrapper],
    dead_letter_queue_name: str | None,
    options: Mapping[str, Any],
    default_visibility: float,
) -> list[str]:
    """Check the options of ``declare_queue`` and return the declare script's arguments.

    Raises:
        ConfigurationError: an unknown option or a value out of range; ``delay_seconds``
            other than 0 (this backend has no queue-wide delay).
    """
    options = dict(options)
    filter_events = options.pop("filter_events", None)
    check_filter_events(filter_events)
    unknown = set(options) - QUEUE_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {sorted(unknown)} for Redis Streams queue {queue_name!r}; "
            f"known: {sorted(QUEUE_OPTIONS | {'filter_events'})}"
        )
    if float(options.get("delay_seconds", 0) or 0) != 0:
        raise ConfigurationError(
            f"queue {queue_name!r}: the Redis Streams backend has no queue-wide delay_seconds; "
            "delay single deliveries with nack(message, delay=...)"
        )
    settings = queue_options("Redis Streams", queue_name, options, default_visibility)
    dead: list[str] = ["0", "0", "0"]
    if dead_letter_queue_name:
        dead_fifo = {"fifo": settings.fifo} if "fifo" in settings.given else {}
        dead_settings = queue_options(
            "Redis Streams", dead_letter_queue_name, dead_fifo, default_visibility
        )
        dead = [
            "1" if dead_settings.fifo else "0",
            str(_ms(dead_settings.visibility_timeout)),
            str(dead_settings.max_receive_count),
        ]
    manifests = json.dumps(sorted(set(filter_events))) if filter_events else ""
    return [
        prefix,
        queue_name,
        dead_letter_queue_name or "",
        "1" if settings.fifo else "0",
        str(_ms(settings.visibility_timeout)),
        str(settings.max_receive_count),
        "1" if "visibility_timeout" in settings.given else "0",
        "1" if "max_receive_count" in settings.given else "0",
        *dead,
        manifests,
        *(topic.name for topic in topics),
    ]


def check_kept_type(queue_name: str, options: Mapping[str, Any], existing: str | None) -> None:
    """A queue cannot change between standard and FIFO once created.

    ``existing`` is the queue's stored ``fifo`` flag (``None``: not created yet).
    """
    if "fifo" not in options or existing is None:
        return
    if (existing == "1") != bool(options["fifo"]):
        kind = "a FIFO" if existing == "1" else "a standard"
        raise ConfigurationError(
            f"queue {queue_name!r} already exists as {kind} queue and cannot change type; "
            "delete it first or use another name"
        )


def translate(exc: Exception) -> Exception:
    """The Melange error for what a script answered (the error itself when it is another)."""
    text = str(exc)
    code, _, name = text.partition(" ")
    if code == "MELANGE_NO_QUEUE":
        return QueueNotFoundError(name)
    if code == "MELANGE_NO_TOPIC":
        return TopicNotFoundError(name)
    if code == "MELANGE_NO_GROUP":
        return ConfigurationError(f"queue {name!r} is FIFO: publish with a message_group_id")
    if code.startswith("MELANGE_"):
        return PublishError(text)
    return exc


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def apply_publish_keywords(messages: Sequence[Message], kwargs: Mapping[str, Any]) -> None:
    """Give ``messages`` the FIFO keywords of a publish (``message_group_id``,
    ``message_deduplication_id``); refuse ``delay_seconds``, which this backend cannot honour
    (a stream entry is delivered as soon as it is added)."""
    apply_undelayed_publish_keywords(messages, kwargs, backend="the Redis Streams backend")


__all__ = [
    "QUEUE_OPTIONS",
    "Keys",
    "apply_publish_keywords",
    "check_kept_type",
    "declare_arguments",
    "translate",
]
