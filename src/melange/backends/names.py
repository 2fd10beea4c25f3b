"""The queue and topic names each backend accepts, checked before any request.

A name the broker would refuse (or, worse, choke on: a RabbitMQ queue name holding a newline
left ``queue.declare`` without an answer) is a :class:`~melange.exceptions.ConfigurationError`
that says what is allowed:

- in-memory and SQLite queues and topics: 1 to 255 bytes of UTF-8, no control characters.
- RabbitMQ queues: 1 to 215 bytes of UTF-8, no control characters, not starting with
  ``amq.``; RabbitMQ topics (exchanges): the same, up to 255 bytes.
- SQS queues: 1 to 80 characters, ASCII letters, digits, ``-`` and ``_``; a FIFO queue's
  name ends with ``.fifo``, counted in the 80. SNS topics: the same, up to 256 characters.

RabbitMQ names are AMQP short strings (at most 255 bytes); queue names keep 40 bytes for the
suffix of the retry queues the backend derives from them (``<queue>.melange-retry-<n>ms``).
"""

from __future__ import annotations

import re
import unicodedata

from melange.exceptions import ConfigurationError

#: The longest name, in UTF-8 bytes, of an in-memory or SQLite queue or topic.
EMBEDDED_MAX_BYTES = 255
#: AMQP short strings (queue and exchange names) hold at most this many bytes.
AMQP_MAX_BYTES = 255
#: Bytes of a RabbitMQ queue name kept for the suffix of its retry queues.
AMQP_RETRY_SUFFIX_BYTES = 40
#: The longest SQS queue name, ``.fifo`` included.
SQS_QUEUE_MAX = 80
#: The longest SNS topic name, ``.fifo`` included.
SNS_TOPIC_MAX = 256
FIFO_SUFFIX = ".fifo"

_AWS_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")


def _text(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{kind} name must be a non-empty string, got {name!r}")
    return name


def _control_character(name: str) -> str | None:
    for char in name:
        if unicodedata.category(char) == "Cc":
            return char
    return None


def _check_bytes_and_controls(kind: str, name: str, limit: int, where: str) -> None:
    char = _control_character(name)
    if char is not None:
        raise ConfigurationError(
            f"{kind} name {name!r} holds the control character {char!r}; {where} {kind} names "
            "may hold any printable characters, without control characters (newlines, tabs, "
            "NUL...)"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{kind} name {name!r} is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    if size > limit:
        raise ConfigurationError(
            f"{kind} name {name[:40]!r}... is {size} bytes long in UTF-8; {where} {kind} names "
            f"hold at most {limit} bytes"
        )


def check_embedded_name(kind: str, name: object) -> str:
    """Check the name of an in-memory or SQLite ``kind`` ("queue", "topic"); returns it."""
    text = _text(kind, name)
    _check_bytes_and_controls(kind, text, EMBEDDED_MAX_BYTES, "in-memory and SQLite")
    return text


def check_amqp_name(kind: str, name: object) -> str:
    """Check any AMQP queue or exchange name (a short string); returns it. Used to look
    names up: declaring applies the stricter rules below."""
    text = _text(kind, name)
    _check_bytes_and_controls(kind, text, AMQP_MAX_BYTES, "RabbitMQ")
    return text


def check_amqp_queue_name(name: object, kind: str = "queue") -> str:
    """Check a RabbitMQ queue name (an AMQP short string, with room for the retry queues'
    suffix); returns it."""
    text = _text(kind, name)
    _check_bytes_and_controls(kind, text, AMQP_MAX_BYTES - AMQP_RETRY_SUFFIX_BYTES, "RabbitMQ")
    if text.startswith("amq."):
        raise ConfigurationError(
            f"{kind} name {text!r} starts with 'amq.', which RabbitMQ reserves for itself"
        )
    return text


def check_amqp_topic_name(name: object) -> str:
    """Check the name of a RabbitMQ topic (an exchange); returns it."""
    text = _text("topic", name)
    _check_bytes_and_controls("topic", text, AMQP_MAX_BYTES, "RabbitMQ")
    if text.startswith("amq."):
        raise ConfigurationError(
            f"topic name {text!r} starts with 'amq.', which RabbitMQ reserves for itself"
        )
    return text


def _check_aws(kind: str, service: str, name: str, limit: int) -> None:
    stem = name[: -len(FIFO_SUFFIX)] if name.endswith(FIFO_SUFFIX) else name
    rule = (
        f"{service} {kind} names are 1 to {limit} characters: ASCII letters, digits, '-' and "
        f"'_', and a FIFO {kind}'s name ends with '{FIFO_SUFFIX}' (counted in the {limit})"
    )
    if len(name) > limit:
        raise ConfigurationError(f"{kind} name {name[:40]!r}... is {len(name)} characters; {rule}")
    if not _AWS_CHARACTERS.fullmatch(stem):
        raise ConfigurationError(f"{kind} name {name!r} is not allowed: {rule}")


def check_sqs_queue_name(name: object, kind: str = "queue") -> str:
    """Check an SQS queue name; returns it."""
    text = _text(kind, name)
    _check_aws(kind, "SQS", text, SQS_QUEUE_MAX)
    return text


def check_sns_topic_name(name: object) -> str:
    """Check an SNS topic name; returns it."""
    text = _text("topic", name)
    _check_aws("topic", "SNS", text, SNS_TOPIC_MAX)
    return text


__all__ = [
    "AMQP_MAX_BYTES",
    "AMQP_RETRY_SUFFIX_BYTES",
    "EMBEDDED_MAX_BYTES",
    "SNS_TOPIC_MAX",
    "SQS_QUEUE_MAX",
    "check_amqp_name",
    "check_amqp_queue_name",
    "check_amqp_topic_name",
    "check_embedded_name",
    "check_sns_topic_name",
    "check_sqs_queue_name",
]
