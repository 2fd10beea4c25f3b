"""The asyncio SQS/SNS backend passes the shared conformance suite, run through as_blocking."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.testing.blocking import as_blocking
from melange.testing.conformance import BackendConformance


@pytest.fixture
def make_blocking_async(
    make_async_aws_backend: Callable[..., Any],
) -> Iterator[Callable[[], MessagingBackend]]:
    """AsyncAWSBackends, each on its own loop thread, closed after the test."""
    opened: list[MessagingBackend] = []

    def make() -> MessagingBackend:
        # As for the blocking suite: each queue's own VisibilityTimeout applies.
        backend = as_blocking(make_async_aws_backend(visibility_timeout=None, wait_time_seconds=1))
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close_connection()


class TestAsyncAWSBackendConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_blocking_async: Callable[[], MessagingBackend]) -> MessagingBackend:
        return make_blocking_async()

    @pytest.fixture
    def make_backend(
        self, make_blocking_async: Callable[[], MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        return make_blocking_async
