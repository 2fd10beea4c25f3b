"""Fixtures for the SQS/SNS tests: a moto server for the session, or an endpoint from the
environment (see README.md in this directory)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from melange.backends.sqs.backend import AWSBackend


@dataclass
class Endpoint:
    """Where the SQS/SNS service of the tests listens, and how to reach it."""

    sqs_url: str | None
    sns_url: str | None
    region: str
    credentials: dict[str, str] = field(default_factory=dict)
    host: str = "localhost"
    port: int = 0

    def options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`AWSBackend`."""
        return {
            "endpoint_url": self.sqs_url,
            "sns_endpoint_url": self.sns_url,
            "region_name": self.region,
            **self.credentials,
        }

    def client(self, service: str) -> Any:
        """A raw boto3 client on the same endpoint (for building or inspecting messages)."""
        url = self.sqs_url if service == "sqs" else self.sns_url
        return boto3.client(service, endpoint_url=url, region_name=self.region, **self.credentials)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.sqs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[Endpoint]:
    """The SQS/SNS endpoint: ``MELANGE_SQS_ENDPOINT`` if set, else a moto server started here."""
    configured = os.environ.get("MELANGE_SQS_ENDPOINT")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if configured is not None:
        sqs_url = configured or None  # empty: real AWS, endpoints resolved by boto3
        sns_url = os.environ.get("MELANGE_SNS_ENDPOINT") or sqs_url
        host, port = "localhost", 0
        if sqs_url:
            parsed = urllib.parse.urlsplit(sqs_url)
            host, port = parsed.hostname or "localhost", parsed.port or 80
        yield Endpoint(sqs_url, sns_url, region, host=host, port=port)
        return
    try:
        import moto.server  # noqa: F401
    except ImportError:
        _unavailable("SERVICE MISSING: moto[server] is not installed and no MELANGE_SQS_ENDPOINT")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _unavailable(f"SERVICE MISSING: the moto server did not start on port {port}")
            time.sleep(0.1)
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    try:
        yield Endpoint(url, url, region, credentials, host="localhost", port=port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def make_aws_backend(sqs_endpoint: Endpoint) -> Iterator[Callable[..., AWSBackend]]:
    """Builds backends on the test endpoint and closes them at the end of the test."""
    made: list[AWSBackend] = []

    def make(**options: Any) -> AWSBackend:
        backend = AWSBackend(**{**sqs_endpoint.options(), **options})
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close_connection()


@pytest.fixture
def async_aws_class() -> type[Any]:
    """:class:`AsyncAWSBackend`, or a failure (CI) / loud skip without the aws-async extra."""
    try:
        from melange.backends.sqs.async_backend import AsyncAWSBackend
    except ImportError as exc:
        _unavailable(f"SERVICE MISSING: the asyncio SQS backend needs aiobotocore ({exc})")
    return AsyncAWSBackend


@pytest.fixture
def make_async_aws_backend(
    sqs_endpoint: Endpoint, async_aws_class: type[Any]
) -> Callable[..., Any]:
    """Builds asyncio backends on the test endpoint (close them with ``await aclose()`` on
    the loop that used them)."""

    def make(**options: Any) -> Any:
        return async_aws_class(**{**sqs_endpoint.options(), **options})

    return make


@pytest.fixture
def aws_backend(make_aws_backend: Callable[..., AWSBackend]) -> AWSBackend:
    """A backend with short long polls, so tests stay quick."""
    return make_aws_backend(wait_time_seconds=1)


@pytest.fixture
def sqs(sqs_endpoint: Endpoint) -> Iterator[Any]:
    """A raw boto3 SQS client, as another (e.g. 7.2.0) service would use it."""
    client = sqs_endpoint.client("sqs")
    yield client
    client.close()


@pytest.fixture
def sns(sqs_endpoint: Endpoint) -> Iterator[Any]:
    """A raw boto3 SNS client."""
    client = sqs_endpoint.client("sns")
    yield client
    client.close()


class Names:
    """Unique queue and topic names, deleted at the end of the test."""

    def __init__(self, sqs: Any, sns: Any) -> None:
        self._sqs = sqs
        self._sns = sns
        self.queues: list[str] = []
        self.topics: list[str] = []

    def queue(self, prefix: str = "q", fifo: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}" + (".fifo" if fifo else "")
        self.queues.append(name)
        return name

    def topic(self, prefix: str = "t", fifo: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}" + (".fifo" if fifo else "")
        self.topics.append(name)
        return name

    def cleanup(self) -> None:
        for name in self.queues:
            with contextlib.suppress(Exception):
                url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
                self._sqs.delete_queue(QueueUrl=url)
        if self.topics:
            with contextlib.suppress(Exception):
                for topic in self._sns.list_topics().get("Topics", []):
                    if topic["TopicArn"].rsplit(":", 1)[-1] in self.topics:
                        self._sns.delete_topic(TopicArn=topic["TopicArn"])


@pytest.fixture
def names(sqs: Any, sns: Any) -> Iterator[Names]:
    """Unique names for this test's queues and topics (deleted afterwards)."""
    created = Names(sqs, sns)
    yield created
    created.cleanup()


class RequestCounter:
    """Counts the HTTP requests a boto3 client sends, by operation, with botocore's events."""

    def __init__(self, *clients: Any) -> None:
        self.operations: list[str] = []
        for client in clients:
            client.meta.events.register("before-send.*", self._count)

    def _count(self, request: Any, **kwargs: Any) -> None:
        target = request.headers.get("X-Amz-Target")
        if target:
            name = target.decode() if isinstance(target, bytes) else str(target)
            self.operations.append(name.rsplit(".", 1)[-1])
        else:
            body = request.body
            text = body.decode() if isinstance(body, bytes) else str(body or "")
            params = dict(urllib.parse.parse_qsl(text))
            self.operations.append(params.get("Action", "?"))

    @property
    def total(self) -> int:
        return len(self.operations)

    def reset(self) -> None:
        self.operations.clear()


@pytest.fixture
def count_requests() -> Callable[..., RequestCounter]:
    """``count_requests(client, ...)`` starts counting the requests those clients send."""
    return RequestCounter
