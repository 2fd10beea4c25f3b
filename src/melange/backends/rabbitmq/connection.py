"""How a connection to RabbitMQ is made and described.

:func:`connection_parameters` checks the connection settings and turns them into pika's
parameters, :func:`redact` keeps passwords out of messages, and
:func:`explain_connection_error` says in one line why connecting failed (pika's own records
of each failed attempt are quietened: see :func:`quiet_pika_connect_errors`). Both RabbitMQ
backends use them; the pika backend's connection lives on its I/O thread
(:mod:`~melange.backends.rabbitmq.io_thread`), the asyncio backend's in
:mod:`~melange.backends.rabbitmq.async_connection`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pika
import pika.exceptions

from melange.backends.numbers import check_number
from melange.exceptions import ConfigurationError
from melange.redaction import redact_text, redact_url

#: Errors that a reconnection cannot fix: wrong credentials, unknown vhost.
FATAL_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


def explain_connection_error(error: BaseException | None) -> str:
    """A readable reason for a connection failure."""
    if error is None:
        return "no error recorded"
    if isinstance(error, FATAL_CONNECT_ERRORS):
        return (
            f"access refused ({type(error).__name__}: {error}); check the username, password "
            "and that the user may access this virtual host"
        )
    root = _root_cause(error)
    text = str(root) or repr(root)
    return f"{type(root).__name__}: {text}"


def _root_cause(error: BaseException) -> BaseException:
    """The error under pika's wrappers: a failed connection workflow holds the error of
    each attempt (the last one is reported), a failed connector the socket's own error."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        attempts = getattr(error, "exceptions", None)
        if isinstance(attempts, list | tuple) and attempts:
            inner: object = attempts[-1]
        elif isinstance(getattr(error, "exception", None), BaseException):
            inner = getattr(error, "exception", None)
        elif error.args:
            inner = error.args[0]
        else:
            inner = None
        if not isinstance(inner, BaseException):
            return error
        error = inner
    return error


#: pika's loggers that report each failed connection attempt, several lines per attempt.
_CONNECT_LOGGERS = (
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
    "pika.adapters.blocking_connection",
    "pika.adapters.utils.selector_ioloop_adapter",
)
_CONNECT_WORDS = ("connect", "address resolution", "getaddrinfo")


class _ConnectAttemptFilter(logging.Filter):
    """Drops pika's records of failed connection attempts: the backend reports each failure
    itself, on one line naming the host, port and reason. They stay visible with pika's
    logger set to ``DEBUG``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return True
        try:
            text = record.getMessage().lower()
        except Exception:
            return True
        return not any(word in text for word in _CONNECT_WORDS)


def quiet_pika_connect_errors(loggers: Sequence[str]) -> None:
    """Have pika's ``loggers`` drop their records of failed connection attempts (once)."""
    for name in loggers:
        target = logging.getLogger(name)
        if not any(isinstance(f, _ConnectAttemptFilter) for f in target.filters):
            target.addFilter(_ConnectAttemptFilter())


quiet_pika_connect_errors(_CONNECT_LOGGERS)


# -- connection parameters -------------------------------------------------------------------


def connection_parameters(
    url: str | None,
    *,
    host: str | None,
    port: int | None,
    virtual_host: str | None,
    credentials: Any,
    username: str | None,
    password: str | None,
    heartbeat: int,
    connection_attempts: int,
    retry_delay: float,
    socket_timeout: float,
    connection_name: str | None,
    extra: Mapping[str, Any],
) -> pika.ConnectionParameters:
    """pika's connection parameters for these settings, checked first.

    Either ``url`` or the separate host, port, virtual host and credentials (or username
    and password); ``extra`` holds further pika parameters. Raises
    :class:`~melange.exceptions.ConfigurationError` for invalid or conflicting settings,
    without the URL's password.
    """
    check_number("connection_attempts", connection_attempts, minimum=1, integer=True)
    check_number("retry_delay", retry_delay, minimum=0)
    check_number("socket_timeout", socket_timeout, positive=True)
    if check_number("heartbeat", heartbeat) <= 0:
        raise ConfigurationError(
            f"heartbeat must be positive (got {heartbeat}): without heartbeats a dead "
            "connection goes unnoticed"
        )
    if credentials is not None and (username is not None or password is not None):
        raise ConfigurationError("give either credentials or username/password, not both")
    extra = dict(extra)
    client_properties = dict(extra.pop("client_properties", None) or {})
    if connection_name is not None:
        client_properties["connection_name"] = connection_name
    common: dict[str, Any] = {
        "heartbeat": heartbeat,
        "connection_attempts": connection_attempts,
        "retry_delay": retry_delay,
        "socket_timeout": socket_timeout,
        "stack_timeout": socket_timeout * 2,
        "blocked_connection_timeout": 300,
    }
    if client_properties:
        common["client_properties"] = client_properties
    if url is not None:
        if any(v is not None for v in (host, port, virtual_host, credentials, username, password)):
            raise ConfigurationError(
                "give either url or host/port/virtual_host/credentials, not both"
            )
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"RabbitMQ URL must start with amqp:// or amqps://, got {redact(url)!r}"
            )
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            reason = redact_text(str(exc), url)
            raise ConfigurationError(f"invalid RabbitMQ URL {redact(url)!r}: {reason}") from None
        try:
            for key, value in {**common, **extra}.items():
                setattr(params, key, value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"invalid RabbitMQ connection parameters: {exc}") from exc
        return params
    if credentials is None:
        credentials = pika.PlainCredentials(username or "guest", password or "guest")
    try:
        return pika.ConnectionParameters(
            host=host or "localhost",
            port=port or 5672,
            virtual_host=virtual_host or "/",
            credentials=credentials,
            **common,
            **extra,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid RabbitMQ connection parameters: {exc}") from exc


def redact(url: str) -> str:
    """``url`` without its password, for error messages."""
    return redact_url(url)
