"""Fixtures for the kombu backend tests, on kombu's Redis transport (the Redis at
127.0.0.1:6379) and its AMQP transport (the RabbitMQ at 127.0.0.1:5672).

Nothing is shared with other data on those services: on Redis each test writes its keys under
a prefix of its own (kombu's ``global_keyprefix``) and deletes every key under it afterwards;
on RabbitMQ the conformance suite's queues and topics have unique names and are deleted by
it, and the other tests delete what they declared.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu_support import TRANSPORTS, delete_redis_prefix, transport_url

from melange.backends.kombu import KombuBackend


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix unique to the test; its keys are deleted afterwards."""
    made = f"melange-kombu-test-{uuid.uuid4().hex[:12]}:"
    yield made
    delete_redis_prefix(made)


@pytest.fixture
def make_kombu(transport: str, prefix: str) -> Iterator[Callable[..., KombuBackend]]:
    """Opens backends on the test's transport (and prefix) and closes them afterwards."""
    opened: list[KombuBackend] = []

    def make(**kwargs: Any) -> KombuBackend:
        kwargs.setdefault("prefix", prefix)
        backend = KombuBackend(kwargs.pop("url", transport_url(transport)), **kwargs)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        with contextlib.suppress(Exception):
            backend.close_connection()


@pytest.fixture
def kombu_backend(make_kombu: Callable[..., KombuBackend]) -> KombuBackend:
    return make_kombu()
