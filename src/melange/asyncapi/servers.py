"""The AsyncAPI ``servers`` entry of a backend URL, without its credentials.

Only the scheme, the host(s) and, for AMQP, the virtual host are kept: a URL's user name,
password and query (which may carry keys) never reach the document.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from melange.exceptions import ConfigurationError

# Backend URL scheme -> AsyncAPI protocol. The embedded backends have no server to describe.
_PROTOCOLS = {
    "amqp": "amqp",
    "amqps": "amqps",
    "sqs": "sqs",
    "nats": "nats",
    "redis+streams": "redis",
    "rediss+streams": "redis",
    "kafka": "kafka",
}
_EMBEDDED = {"memory", "sqlite"}


def server_from_url(url: str) -> dict[str, Any] | None:
    """The AsyncAPI server object for backend ``url``; ``None`` for an embedded backend.

    Raises:
        ConfigurationError: The scheme is not a backend URL scheme.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _EMBEDDED:
        return None
    protocol = _PROTOCOLS.get(scheme)
    if protocol is None:
        raise ConfigurationError(
            f"unknown backend URL scheme {scheme!r}; expected one of "
            f"{', '.join(sorted(_PROTOCOLS | dict.fromkeys(_EMBEDDED, '')))}"
        )
    host = parts.netloc.rpartition("@")[2]
    if scheme == "sqs" and not host:
        host = "sqs.amazonaws.com"  # the AWS endpoint of the URL's region
    server: dict[str, Any] = {"host": host, "protocol": protocol}
    if scheme in ("amqp", "amqps"):
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        server["pathname"] = "/" + vhost.lstrip("/") if vhost != "/" else "/"
        server["description"] = f"RabbitMQ, virtual host {vhost!r}."
    return server


__all__ = ["server_from_url"]
