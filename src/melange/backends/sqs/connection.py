"""Connecting :class:`~melange.backends.sqs.backend.AWSBackend` to SQS and SNS: the boto3
clients (session, region, endpoints, credentials, timeouts) and how botocore's failures are
reported as Melange errors.

Requests as data: what the backends do is written once, as generators (:data:`Steps`) that
yield the :class:`Call` s they need and receive each answer (or have its error thrown in).
:func:`run_steps` performs them with boto3's clients; the asyncio backend awaits them on
aiobotocore's (:mod:`melange.backends.sqs.async_backend`).

This module imports boto3, and says which extra to install when it is missing; the other
modules of the package that need botocore get it through here.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the SQS/SNS backends need boto3 ({exc}): pip install 'melange[aws]'"
    ) from exc


from melange.exceptions import BackendConnectionError, BackendError, ConfigurationError

_T = TypeVar("_T")

#: The longest long poll SQS accepts.
MAX_WAIT_SECONDS = 20

#: An error answer of SQS or SNS (its code: :func:`code`).
ClientError = botocore.exceptions.ClientError

QUEUE_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
QUEUE_EXISTS = {"QueueAlreadyExists", "QueueNameExists"}
TOPIC_MISSING = {"NotFound", "NotFoundException"}
# A receipt handle that expired or was already used: settling it late is a no-op.
STALE_RECEIPT = {
    "ReceiptHandleIsInvalid",
    "InvalidParameterValue",
    "AWS.SimpleQueueService.MessageNotInflight",
    "MessageNotInflight",
}
NETWORK_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.HTTPClientError,
)


@dataclass(frozen=True)
class Call:
    """One SQS or SNS request: ``service`` (``"sqs"`` or ``"sns"``), the client method
    (``"send_message"``...) and its arguments."""

    service: str
    operation: str
    params: dict[str, Any] = field(default_factory=dict)


#: A backend operation as a generator: it yields the requests it needs, is sent each answer
#: (or has the client's exception thrown in), and returns its result.
Steps = Generator[Call, Any, _T]


def run_steps(steps: Steps[_T], sqs: Any, sns: Any) -> _T:
    """Perform ``steps`` with blocking (boto3) clients and return their result."""
    clients = {"sqs": sqs, "sns": sns}
    try:
        call = next(steps)
        while True:
            try:
                answer = getattr(clients[call.service], call.operation)(**call.params)
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(answer)
    except StopIteration as stop:
        result: _T = stop.value
        return result
    finally:
        steps.close()


def make_clients(
    *,
    region_name: str | None,
    endpoint_url: str | None,
    sns_endpoint_url: str | None,
    session: boto3.Session | None,
    config: botocore.config.Config | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
) -> tuple[Any, Any]:
    """The SQS and SNS clients, found the way boto3 finds them unless given (see
    :class:`~melange.backends.sqs.backend.AWSBackend` for the arguments)."""
    session = session or boto3.Session()
    options = client_options(
        region_name=region_name,
        session_region=session.region_name,
        config=config,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
    )
    try:
        sqs: Any = session.client("sqs", endpoint_url=endpoint_url, **options)
        sns: Any = session.client("sns", endpoint_url=sns_endpoint_url or endpoint_url, **options)
    except botocore.exceptions.NoRegionError as exc:
        raise ConfigurationError(NO_REGION) from exc
    return sqs, sns


def client_options(
    *,
    region_name: str | None,
    session_region: str | None,
    config: botocore.config.Config | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
) -> dict[str, Any]:
    """Keyword arguments common to the SQS and SNS clients (boto3 or aiobotocore): region,
    timeouts and retries, and the explicit credentials."""
    # boto3 reads AWS_DEFAULT_REGION; AWS_REGION (the name AWS's own runtimes set) is
    # accepted too.
    region_name = region_name or session_region or os.environ.get("AWS_REGION")
    # The read timeout must outlast a long poll; retries stay boto3's standard ones.
    defaults: dict[str, Any] = {
        "read_timeout": max(60, MAX_WAIT_SECONDS + 10),
        "retries": {"mode": "standard"},
    }
    # The defaults take the class of the given config, so that options only its class knows
    # (aiobotocore's AioConfig: connector_args, http_session_cls) survive the merge.
    base = botocore.config.Config(**defaults) if config is None else type(config)(**defaults)
    return {
        "region_name": region_name,
        "config": base.merge(config) if config is not None else base,
        "aws_access_key_id": aws_access_key_id,
        "aws_secret_access_key": aws_secret_access_key,
        "aws_session_token": aws_session_token,
    }


NO_REGION = (
    "no AWS region configured: pass region_name=... or set AWS_REGION (or AWS_DEFAULT_REGION)"
)


def code(exc: botocore.exceptions.ClientError) -> str:
    """The error code of an SQS or SNS answer."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def text(exc: botocore.exceptions.ClientError) -> str:
    """``Code: message`` of an SQS or SNS answer."""
    error = exc.response.get("Error", {})
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()


@contextmanager
def errors(action: str, error: type[Exception] = BackendError) -> Iterator[None]:
    """Turn botocore failures into Melange errors that say what was being done."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        raise error(f"{action} failed: {text(exc)}") from exc
    except NETWORK_ERRORS as exc:
        raise BackendConnectionError(f"{action} failed: cannot reach AWS: {exc}") from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise BackendError(
            f"{action} failed: no AWS credentials found; configure them as boto3 expects "
            "or pass aws_access_key_id/aws_secret_access_key"
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise BackendError(f"{action} failed: {exc}") from exc


__all__ = [
    "MAX_WAIT_SECONDS",
    "NETWORK_ERRORS",
    "NO_REGION",
    "QUEUE_EXISTS",
    "QUEUE_MISSING",
    "STALE_RECEIPT",
    "TOPIC_MISSING",
    "Call",
    "ClientError",
    "Steps",
    "client_options",
    "code",
    "errors",
    "make_clients",
    "run_steps",
    "text",
]
