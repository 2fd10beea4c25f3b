"""SQS-compatible brokers on your machine: ElasticMQ, LocalStack, moto (needs the ``aws`` extra).

:class:`LocalSQSBackend` is :class:`~melange.backends.sqs.backend.AWSBackend` pointed at a
local endpoint, with placeholder credentials and region so nothing has to be configured::

    backend = LocalSQSBackend(host="localhost", port=9324)
"""

from __future__ import annotations

import os
from typing import Any

from melange.backends.sqs.backend import AWSBackend
from melange.exceptions import ConfigurationError

#: Region used when neither ``region_name`` nor ``AWS_REGION``/``AWS_DEFAULT_REGION`` is set.
DEFAULT_REGION = "us-east-1"
#: Placeholder credentials: local brokers accept any.
DEFAULT_CREDENTIALS = ("melange", "melange")


def endpoint(host: str | None, port: int | str | None, what: str = "SQS") -> str:
    """``http://host:port`` from a host given with or without a scheme, and a port."""
    if not host or not str(host).strip():
        raise ConfigurationError(
            f"LocalSQSBackend needs the {what} host, e.g. LocalSQSBackend(host='localhost', "
            "port=9324) (got an empty host: is an environment variable unset?)"
        )
    host = str(host).strip().rstrip("/")
    scheme = "http"
    if "://" in host:
        scheme, host = host.split("://", 1)
    if port is None or str(port).strip() == "":
        if ":" in host:
            return f"{scheme}://{host}"
        raise ConfigurationError(
            f"LocalSQSBackend needs the {what} port, e.g. port=9324 (got {port!r})"
        )
    try:
        number = int(str(port).strip())
    except ValueError:
        raise ConfigurationError(f"{what} port must be a number, got {port!r}") from None
    if not 0 < number < 65536:
        raise ConfigurationError(f"{what} port must be between 1 and 65535, got {number}")
    return f"{scheme}://{host}:{number}"


def local_options(
    host: str | None,
    port: int | str | None,
    sns_host: str | None,
    sns_port: int | str | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The backend options for a local broker: its endpoints, and placeholder region and
    credentials unless given (shared by :class:`LocalSQSBackend` and the asyncio
    ``AsyncLocalSQSBackend``)."""
    options = dict(options)
    sqs_url = endpoint(host, port)
    sns_url = sqs_url
    if sns_host is not None or sns_port is not None:
        sns_url = endpoint(sns_host or host, sns_port if sns_port is not None else port, "SNS")
    options.setdefault(
        "region_name",
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
    )
    if "session" not in options:
        options.setdefault("aws_access_key_id", DEFAULT_CREDENTIALS[0])
        options.setdefault("aws_secret_access_key", DEFAULT_CREDENTIALS[1])
    options.setdefault("endpoint_url", sqs_url)
    options.setdefault("sns_endpoint_url", sns_url)
    return options


class LocalSQSBackend(AWSBackend):
    """An SQS-compatible broker at ``host:port`` (SNS at ``sns_host:sns_port``, by default the
    same endpoint, as LocalStack and moto serve both).

    The host may carry a scheme (``"http://localhost"``) or not (``"localhost"``); the port may
    be a string (as read from the environment). Region and credentials default to
    placeholders unless passed or set in the environment. Other keyword arguments are those of
    :class:`~melange.backends.sqs.backend.AWSBackend` (``visibility_timeout``,
    ``wait_time_seconds``, ...).
    """

    def __init__(
        self,
        host: str | None = "localhost",
        port: int | str | None = 9324,
        sns_host: str | None = None,
        sns_port: int | str | None = None,
        **options: Any,
    ) -> None:
        options = local_options(host, port, sns_host, sns_port, options)
        super().__init__(**options)
        #: The SQS endpoint URL in use.
        self.endpoint_url: str = options["endpoint_url"]
        #: The SNS endpoint URL in use.
        self.sns_endpoint_url: str = options["sns_endpoint_url"]


__all__ = ["LocalSQSBackend", "endpoint", "local_options"]
