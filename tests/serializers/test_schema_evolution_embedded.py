"""Schema evolution between two versions of a service on the embedded backends (in-memory and
SQLite), and through the asyncio publisher and dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.models import FAILURE_REASON
from schema_evolution_support import KINDS, SCENARIOS, Deployment


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_schema_evolution_in_memory(
    scenario: Callable[[MessagingBackend, str], None], kind: str
) -> None:
    scenario(InMemoryMessagingBackend(), kind)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_schema_evolution_on_sqlite(
    scenario: Callable[[MessagingBackend, str], None], tmp_path: Path
) -> None:
    backend = SQLiteBackend(tmp_path / "evolution.db")
    try:
        scenario(backend, "pydantic")
    finally:
        backend.close_connection()


def test_the_asyncio_publisher_and_dispatcher_upcast_and_dead_letter_too() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("evolve", dead_letter_queue_name="evolve-dlq")
    old, new = Deployment("msgspec", 1), Deployment("msgspec", 2)
    handled: list[object] = []

    async def run() -> None:
        publisher = AsyncQueuePublisher(old.serializer, backend)
        await publisher.publish("evolve", old.order(order_id=1, amount_cents=100))
        await AsyncQueuePublisher(new.serializer, backend).publish(
            "evolve", new.order(order_id=2, amount_cents=200, currency="USD")
        )
        dispatcher = AsyncMessageDispatcher(
            new.serializer, backend=backend, consumers=[Consumer(on_message=handled.append)]
        )
        while await dispatcher.consume_event("evolve"):
            pass
        old_dispatcher = AsyncMessageDispatcher(
            old.serializer, backend=backend, consumers=[Consumer(on_message=handled.append)]
        )
        await AsyncQueuePublisher(new.serializer, backend).publish(
            "evolve", new.order(order_id=3, amount_cents=300, currency="USD")
        )
        while await old_dispatcher.consume_event("evolve"):
            pass

    asyncio.run(run())
    assert handled == [
        new.order(order_id=1, amount_cents=100, currency="EUR"),
        new.order(order_id=2, amount_cents=200, currency="USD"),
    ]
    dead = backend.retrieve_messages(backend.get_queue("evolve-dlq"))
    assert len(dead) == 1
    assert "version 2 is newer than version 1" in dead[0].headers[FAILURE_REASON]
