"""``kafka://`` URLs name a KafkaBackend; query parameters set its options."""

from __future__ import annotations

import pytest

from melange.backends.kafka import KafkaBackend
from melange.backends.urls import backend_from_url
from melange.exceptions import ConfigurationError


def test_kafka_url_names_the_brokers_and_options() -> None:
    backend = backend_from_url("kafka://127.0.0.1:1,localhost:2?partitions=4&idempotence=false")
    try:
        assert isinstance(backend, KafkaBackend)
        assert backend.servers == "127.0.0.1:1,localhost:2"
        assert backend.admin.partitions == 4
        assert backend.settings.idempotence is False
    finally:
        backend.close_connection()


def test_kafka_url_refuses_unknown_options_and_paths() -> None:
    with pytest.raises(ConfigurationError, match="KafkaBackend takes"):
        backend_from_url("kafka://127.0.0.1:1?client_config=x")
    with pytest.raises(ConfigurationError, match="no path"):
        backend_from_url("kafka://127.0.0.1:1/queue")
