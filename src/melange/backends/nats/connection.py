"""Connecting to a NATS server: the options nats-py gets, and how its failures read.

A server is named by a URL, ``nats://host:4222`` (``tls://`` for TLS, ``nats://user:password@``
or ``nats://token@`` for credentials), or several, comma-separated, for a cluster. The
password never appears in :func:`describe`, an error or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from melange.exceptions import ConfigurationError

logger = logging.getLogger("melange.backends.nats")

DEFAULT_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class ServerAddress:
    """Where the servers are, and how to tell the user without the credentials."""

    servers: tuple[str, ...]
    describe: str


def server_address(url: str | Sequence[str] | None) -> ServerAddress:
    """Parse the server URL(s); raises ``ConfigurationError`` for a malformed one."""
    urls: list[str]
    if url is None:
        urls = [DEFAULT_URL]
    elif isinstance(url, str):
        urls = [u.strip() for u in url.split(",") if u.strip()]
    else:
        urls = [str(u).strip() for u in url]
    if not urls:
        raise ConfigurationError("no NATS server URL given, e.g. nats://127.0.0.1:4222")
    shown: list[str] = []
    for item in urls:
        if "://" not in item:
            raise ConfigurationError(f"NATS server URL {redact(item)!r} needs a scheme: nats://")
        parts = urlsplit(item)
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ConfigurationError(
                f"NATS server URL {redact(item)!r} must be nats://host:port (or tls://...)"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"NATS server URL {redact(item)!r}: {exc}") from exc
        shown.append(f"{parts.hostname}:{port or 4222}")
    return ServerAddress(tuple(urls), ", ".join(shown))


def redact(url: str) -> str:
    """``url`` without its password or token."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username if parts.password is not None else None
    shown = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit(parts._replace(netloc=shown))


def connect_options(
    address: ServerAddress,
    *,
    name: str | None,
    connect_timeout: float,
    reconnect_time_wait: float,
    max_reconnect_attempts: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` (``extra`` adds nats-py's own, e.g. ``tls``)."""
    options: dict[str, Any] = {
        "servers": list(address.servers),
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": reconnect_time_wait,
        "max_reconnect_attempts": max_reconnect_attempts,
        "allow_reconnect": True,
        # Logged rather than printed by nats-py.
        "error_cb": _on_error,
    }
    if name:
        options["name"] = name
    options.update(extra)
    return options


async def _on_error(error: Exception) -> None:
    logger.debug("NATS client error: %s", explain(error))


def explain(error: BaseException | None) -> str:
    """A readable reason for a failure (nats-py's messages never hold the password)."""
    if error is None:
        return "no error recorded"
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


__all__ = ["DEFAULT_URL", "ServerAddress", "connect_options", "explain", "redact", "server_address"]
