"""The NATS JetStream backend passes the shared conformance suite, blocking and through the
asynchronous contract (the asyncio backend run through as_blocking)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.nats import AsyncNATSBackend
from melange.testing.blocking import as_blocking
from melange.testing.conformance import BackendConformance

pytestmark = pytest.mark.nats


class TestNATSConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_nats: Callable[..., MessagingBackend]) -> MessagingBackend:
        return make_nats()

    @pytest.fixture
    def make_backend(
        self, make_nats: Callable[..., MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        return make_nats


@pytest.fixture
def make_async_blocking(
    make_async_nats: Callable[..., AsyncNATSBackend],
) -> Iterator[Callable[[], MessagingBackend]]:
    """asyncio backends, each on its own loop thread through as_blocking."""
    opened: list[MessagingBackend] = []

    def make() -> MessagingBackend:
        backend = as_blocking(make_async_nats())
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close_connection()


class TestAsyncNATSConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_async_blocking: Callable[[], MessagingBackend]) -> MessagingBackend:
        return make_async_blocking()

    @pytest.fixture
    def make_backend(
        self, make_async_blocking: Callable[[], MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        return make_async_blocking
