"""Fixtures for the Kafka tests: one tansu broker for the session, backends on it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tansu_broker import Backends, start_tansu

from melange.backends.kafka import KafkaBackend


@pytest.fixture(scope="session")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker on a free port, for every Kafka test of the session."""
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with start_tansu(log) as url:
        yield url


@pytest.fixture
def kafka_backends(kafka_url: str) -> Iterator[Backends]:
    backends = Backends(kafka_url)
    yield backends
    backends.close_all()


@pytest.fixture
def make_kafka(kafka_backends: Backends) -> Callable[..., KafkaBackend]:
    """Opens Kafka backends on the test broker (closed after the test)."""
    return kafka_backends.make
