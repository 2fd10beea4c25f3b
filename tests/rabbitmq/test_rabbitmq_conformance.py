"""The RabbitMQ backend passes the shared conformance suite on the real broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange.backends.rabbitmq import RabbitMQBackend
from melange.testing.conformance import BackendConformance

pytestmark = pytest.mark.rabbitmq


class TestRabbitMQQuorumConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_rabbit: Callable[..., RabbitMQBackend]) -> RabbitMQBackend:
        return make_rabbit()

    @pytest.fixture
    def make_backend(
        self, make_rabbit: Callable[..., RabbitMQBackend]
    ) -> Callable[[], RabbitMQBackend]:
        return make_rabbit


class TestRabbitMQClassicConformance(BackendConformance):
    """Classic queues: no native dead-lettering, redelivery counted by the backend."""

    @pytest.fixture
    def backend(self, make_rabbit: Callable[..., RabbitMQBackend]) -> RabbitMQBackend:
        return make_rabbit(queue_type="classic")

    @pytest.fixture
    def make_backend(
        self, make_rabbit: Callable[..., RabbitMQBackend]
    ) -> Callable[[], RabbitMQBackend]:
        return lambda: make_rabbit(queue_type="classic")
