"""Backend URLs and kombu connections: which transport, with which options.

A backend URL names the kombu transport after ``kombu+``: ``kombu+redis://host:6379/0``,
``kombu+amqp://user:password@host:5672/vhost`` (``kombu+pyamqp://`` is the same), or any
other transport kombu knows (``kombu+memory://``, ``kombu+sqs://``, ...). What follows the
``kombu+`` is handed to ``kombu.Connection`` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from melange.exceptions import ConfigurationError
from melange.redaction import redact_url

#: The prefix of backend URLs naming a kombu transport.
SCHEME_PREFIX = "kombu+"

#: Seconds a read or write on the broker's connection may take.
IO_TIMEOUT = 10.0


def kombu_url(url: str) -> str:
    """The URL kombu reads: the backend URL without its ``kombu+`` prefix."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"kombu backend URL {redacted(str(url))!r} must look like kombu+redis://host:6379/0 "
            "or kombu+amqp://user:password@host:5672/vhost"
        )
    if url.lower().startswith(SCHEME_PREFIX):
        return url[len(SCHEME_PREFIX) :]
    return url


def transport_name(url: str) -> str:
    """The transport part of a kombu URL (``redis``, ``amqp``...), lower case."""
    return urlsplit(kombu_url(url)).scheme.lower()


def redacted(url: str) -> str:
    """The URL without its password, for reprs and errors."""
    return redact_url(url)


def transport_options(
    driver: str, prefix: str, visibility_timeout: float, given: Mapping[str, Any] | None
) -> dict[str, Any]:
    """kombu ``transport_options`` for a transport whose ``driver_type`` is ``driver``.

    Redis: every key under ``prefix`` (kombu's ``global_keyprefix``, its unacknowledged
    index included, so backends on other prefixes, and other kombu applications, never
    restore each other's messages) and kombu's visibility timeout. AMQP: publisher confirms,
    so a publish returns once the broker has the message. Both: reads and writes time out
    after :data:`IO_TIMEOUT` seconds. ``given`` overrides them.
    """
    options: dict[str, Any] = {}
    # A half-open connection (a network that drops packets without a reset) would block a
    # read for good, holding the backend's lock: every call fails after this instead, and
    # the backend opens a new connection.
    if driver == "redis":
        options.update(global_keyprefix=prefix, visibility_timeout=float(visibility_timeout))
        options.update(socket_timeout=IO_TIMEOUT, socket_connect_timeout=IO_TIMEOUT)
    elif driver in ("amqp", "librabbitmq"):
        options.update(confirm_publish=True, read_timeout=IO_TIMEOUT, write_timeout=IO_TIMEOUT)
    options.update(given or {})
    return options


__all__ = [
    "IO_TIMEOUT",
    "SCHEME_PREFIX",
    "kombu_url",
    "redacted",
    "transport_name",
    "transport_options",
]
