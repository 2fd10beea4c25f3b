"""The asyncio Kafka backend passes the shared conformance suite, run through as_blocking."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tansu_broker import ASYNC_TEST_OPTIONS

from melange.backends.interfaces import MessagingBackend
from melange.backends.kafka import AsyncKafkaBackend
from melange.testing.blocking import as_blocking
from melange.testing.conformance import BackendConformance, Topology

pytestmark = pytest.mark.kafka


@pytest.fixture
def async_kafka(kafka_url: str) -> Iterator[list[MessagingBackend]]:
    """Asyncio backends, each on its own loop thread; closed after the test."""
    opened: list[MessagingBackend] = []
    yield opened
    for backend in opened:
        backend.close_connection()


class TestAsyncKafkaConformance(BackendConformance):
    @pytest.fixture
    def make_backend(
        self, kafka_url: str, async_kafka: list[MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        def make() -> MessagingBackend:
            backend = as_blocking(AsyncKafkaBackend(kafka_url, **ASYNC_TEST_OPTIONS))  # type: ignore[arg-type]
            async_kafka.append(backend)
            return backend

        return make

    @pytest.fixture
    def backend(self, make_backend: Callable[[], MessagingBackend]) -> MessagingBackend:
        return make_backend()

    @pytest.fixture
    def topology(
        self, backend: MessagingBackend, async_kafka: list[MessagingBackend]
    ) -> Iterator[Topology]:
        topo = Topology(backend)
        yield topo
        for other in async_kafka[1:]:  # no consumer may read a topic being deleted (tansu)
            other.close_connection()
        topo.cleanup()
