"""The blocking Kafka backend passes the shared conformance suite on a tansu broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tansu_broker import Backends

from melange.backends.interfaces import MessagingBackend
from melange.backends.kafka import KafkaBackend
from melange.testing.conformance import BackendConformance, Topology

pytestmark = pytest.mark.kafka


class TestKafkaConformance(BackendConformance):
    @pytest.fixture
    def backend(self, kafka_backends: Backends) -> MessagingBackend:
        return kafka_backends.make()

    @pytest.fixture
    def make_backend(
        self, make_kafka: Callable[..., KafkaBackend]
    ) -> Callable[[], MessagingBackend]:
        return make_kafka

    @pytest.fixture
    def topology(self, backend: MessagingBackend, kafka_backends: Backends) -> Iterator[Topology]:
        topo = Topology(backend)
        yield topo
        kafka_backends.close_extra()  # no consumer may read a topic being deleted (tansu)
        topo.cleanup()
