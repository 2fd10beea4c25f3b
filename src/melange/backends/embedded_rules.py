"""The broker rules the embedded backends share: in-memory and SQLite emulate one broker.

Both backends emulate an SQS-like broker in process. What they both decide lives here, once:
which queue options exist and which values they accept, that a queue keeps its type, how long
FIFO deduplication ids are remembered, and what a dead-lettered copy of a message looks like.
A combination one of them refuses, the other refuses the same way, up front, with the same
error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange.backends.interfaces import DEFAULT_MAX_RECEIVE_COUNT
from melange.backends.names import check_embedded_name
from melange.backends.numbers import check_number
from melange.exceptions import ConfigurationError
from melange.models import FAILURE_QUEUE, FAILURE_REASON, Message

#: Options of ``declare_queue`` besides ``filter_events``.
QUEUE_OPTIONS = frozenset({"fifo", "visibility_timeout", "delay_seconds", "max_receive_count"})

#: How long a FIFO queue remembers a deduplication id, in seconds (as SQS does).
DEDUPLICATION_WINDOW_SECONDS = 300.0


@dataclass(frozen=True)
class QueueOptions:
    """Validated queue options; ``given`` names those the caller set explicitly."""

    fifo: bool
    visibility_timeout: float
    delay_seconds: float
    max_receive_count: int
    given: frozenset[str]


def queue_options(
    backend: str, name: str, options: Mapping[str, Any], default_visibility: float
) -> QueueOptions:
    """Check ``options`` for queue ``name`` on ``backend`` (a label for errors).

    Raises:
        ConfigurationError: an unknown option, or a value out of range.
    """
    unknown = set(options) - QUEUE_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {sorted(unknown)} for {backend} queue {name!r}; "
            f"known: {sorted(QUEUE_OPTIONS | {'filter_events'})}"
        )
    check_embedded_name("queue", name)
    visibility = check_number(
        f"visibility_timeout of queue {name!r}",
        options.get("visibility_timeout", default_visibility),
        positive=True,
    )
    delay = check_number(
        f"delay_seconds of queue {name!r}", options.get("delay_seconds", 0.0), minimum=0
    )
    count = int(
        check_number(
            "max_receive_count",
            options.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT),
            minimum=1,
            integer=True,
        )
    )
    return QueueOptions(
        fifo=bool(options.get("fifo", name.endswith(".fifo"))),
        visibility_timeout=visibility,
        delay_seconds=delay,
        max_receive_count=count,
        given=frozenset(options),
    )


def check_filter_events(filter_events: Any) -> None:
    """A string would filter on its characters: refuse it."""
    if isinstance(filter_events, str):
        raise ConfigurationError(
            f"filter_events must be a list of manifests, got the string {filter_events!r}"
        )


def check_type_kept(name: str, existing_fifo: bool, options: QueueOptions) -> None:
    """A queue cannot change between standard and FIFO once created."""
    if "fifo" in options.given and options.fifo != existing_fifo:
        kind = "a FIFO" if existing_fifo else "a standard"
        raise ConfigurationError(
            f"queue {name!r} already exists as {kind} queue and cannot change type; "
            "delete it first or use another name"
        )


def dead_letter_copy(
    message: Message,
    headers: Mapping[str, str],
    *,
    source_queue: str,
    reason: str,
    into_fifo: bool,
) -> tuple[Message, dict[str, str]]:
    """The copy of ``message`` a dead-letter queue receives, and its headers.

    The copy keeps the body, manifest, serializer and headers, and gains the failure reason
    and source queue (unless the dispatcher already said why). It drops the deduplication id
    (a second failure of the same message must not be swallowed), and a copy going to a FIFO
    dead-letter queue from a standard queue joins one group named after the source queue, so
    the dead-letter queue keeps the order of failures instead of refusing the copy.
    """
    copy_headers = dict(headers)
    copy_headers.setdefault(FAILURE_REASON, reason)
    copy_headers.setdefault(FAILURE_QUEUE, source_queue)
    copy = Message(
        message.message_id,
        message.content,
        None,
        message.serializer_id,
        message.manifest,
        copy_headers,
        message.attempt,
        message.group_id if message.group_id is not None or not into_fifo else source_queue,
        None,
    )
    return copy, copy_headers


__all__ = [
    "DEDUPLICATION_WINDOW_SECONDS",
    "QUEUE_OPTIONS",
    "QueueOptions",
    "check_filter_events",
    "check_type_kept",
    "dead_letter_copy",
    "queue_options",
]
