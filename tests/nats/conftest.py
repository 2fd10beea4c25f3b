"""Fixtures for the NATS tests: backends on the JetStream server at 127.0.0.1:4222.

The server is shared: every test gets a prefix of its own for stream names and subjects, and
the streams of that prefix are deleted after the test (no other stream is ever touched).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from nats_support import delete_streams

from melange.backends.nats import AsyncNATSBackend, NATSBackend
from service_check import require_service


@pytest.fixture
def nats_url() -> str:
    host, port = require_service("nats")
    return f"nats://{host}:{port}"


@pytest.fixture
def prefix(nats_url: str) -> Iterator[str]:
    """A stream and subject prefix unique to the test; its streams are deleted afterwards."""
    made = f"mtest-{uuid.uuid4().hex[:10]}"
    yield made
    delete_streams(nats_url, made)


@pytest.fixture
def make_nats(nats_url: str, prefix: str) -> Iterator[Callable[..., NATSBackend]]:
    """Opens blocking backends on the test's prefix and closes them after the test."""
    opened: list[NATSBackend] = []

    def make(url: str | None = None, **kwargs: object) -> NATSBackend:
        kwargs.setdefault("prefix", prefix)
        backend = NATSBackend(url or nats_url, **kwargs)  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close_connection()


@pytest.fixture
def make_async_nats(nats_url: str, prefix: str) -> Callable[..., AsyncNATSBackend]:
    """Makes asyncio backends on the test's prefix (the test closes them on its loop)."""

    def make(url: str | None = None, **kwargs: object) -> AsyncNATSBackend:
        kwargs.setdefault("prefix", prefix)
        return AsyncNATSBackend(url or nats_url, **kwargs)  # type: ignore[arg-type]

    return make
