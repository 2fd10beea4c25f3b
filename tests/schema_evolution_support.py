"""Schema evolution scenarios run on every backend: an old publisher and a new consumer, and
a new publisher and an old consumer, with each typed serializer.

The two versions of ``shop.OrderPlaced`` are separate classes, as they would be in two
deployments of a service: version 2 added ``currency`` (its upcaster fills in ``"EUR"``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pydantic

from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_REASON, Message
from melange.publishers import TopicPublisher
from melange.serializers import SCHEMA_VERSION_HEADER, DataclassSerializer, message_type
from melange.serializers.evolution import NewerVersions
from melange.serializers.msgspec import MsgspecSerializer
from melange.serializers.pydantic import PydanticSerializer
from melange.serializers.typed import TypedSerializer
from melange.testing.conformance import Topology, assert_empty, receive

KINDS = ("dataclass", "pydantic", "msgspec")
MANIFEST = "shop.OrderPlaced"


@message_type(MANIFEST, version=1)
@dataclass(frozen=True)
class DataclassV1:
    order_id: int
    amount_cents: int


@message_type(MANIFEST, version=2)
@dataclass(frozen=True)
class DataclassV2:
    order_id: int
    amount_cents: int
    currency: str


@message_type(MANIFEST, version=1)
class PydanticV1(pydantic.BaseModel):
    order_id: int
    amount_cents: int


@message_type(MANIFEST, version=2)
class PydanticV2(pydantic.BaseModel):
    order_id: int
    amount_cents: int
    currency: str


@message_type(MANIFEST, version=1)
class MsgspecV1(msgspec.Struct, frozen=True):
    order_id: int
    amount_cents: int


@message_type(MANIFEST, version=2)
class MsgspecV2(msgspec.Struct, frozen=True):
    order_id: int
    amount_cents: int
    currency: str


_CLASSES: dict[str, tuple[type[Any], type[Any], type[TypedSerializer]]] = {
    "dataclass": (DataclassV1, DataclassV2, DataclassSerializer),
    "pydantic": (PydanticV1, PydanticV2, PydanticSerializer),
    "msgspec": (MsgspecV1, MsgspecV2, MsgspecSerializer),
}


def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
    """The upcaster from version 1 to 2: orders of version 1 were all in euros."""
    return {**payload, "currency": "EUR"}


class Deployment:
    """One version of the service: its message class and its serializer."""

    def __init__(self, kind: str, version: int, newer_versions: NewerVersions = "dead_letter"):
        v1, v2, serializer_class = _CLASSES[kind]
        self.message_class = v1 if version == 1 else v2
        self.serializer = serializer_class(self.message_class, newer_versions=newer_versions)
        if version == 2:
            self.serializer.add_upcaster(v2, 1, add_currency)

    def order(self, **fields: Any) -> Any:
        return self.message_class(**fields)


class Route:
    """A topic and a queue subscribed to it (with a dead-letter queue), deleted afterwards."""

    def __init__(self, backend: MessagingBackend) -> None:
        self.backend = backend
        self.topology = Topology(backend)
        self.topic = self.topology.topic()
        self.queue = self.topology.queue(self.topic, dlq=True)
        self.dead_letters = self.topology.dead_letter_queue_of(self.queue)

    def publish(self, deployment: Deployment, **fields: Any) -> Message:
        """Publish an order of ``deployment``'s version to the topic."""
        publisher = TopicPublisher(deployment.serializer, self.backend)
        return publisher.publish(self.topic, deployment.order(**fields))

    def consume(
        self, deployment: Deployment, timeout: float = 15.0
    ) -> tuple[list[Any], list[Message]]:
        """Run ``deployment``'s dispatcher until a message was handled or dead-lettered."""
        handled: list[Any] = []
        dispatcher = MessageDispatcher(
            deployment.serializer,
            backend=self.backend,
            consumers=[Consumer(on_message=handled.append)],
        )
        dead: list[Message] = []
        deadline = time.monotonic() + timeout
        while not handled and not dead and time.monotonic() < deadline:
            dispatcher.consume_event(self.queue.name)
            if not handled:
                dead = receive(self.backend, self.dead_letters, 1, timeout=0.5)
        return handled, dead


@contextmanager
def route(backend: MessagingBackend) -> Iterator[Route]:
    """A :class:`Route` for one scenario, cleaned up after it."""
    made = Route(backend)
    try:
        yield made
    finally:
        made.topology.cleanup()


def old_publisher_new_consumer(backend: MessagingBackend, kind: str) -> None:
    """A version 1 message reaches a version 2 consumer upcast, through a topic."""
    old, new = Deployment(kind, 1), Deployment(kind, 2)
    with route(backend) as orders:
        sent = orders.publish(old, order_id=7, amount_cents=1250)
        assert sent.headers[SCHEMA_VERSION_HEADER] == "1"
        handled, dead = orders.consume(new)
        assert not dead, f"dead-lettered: {[m.headers.get(FAILURE_REASON) for m in dead]}"
        assert handled == [new.order(order_id=7, amount_cents=1250, currency="EUR")]
        assert_empty(backend, orders.dead_letters, wait=0.5)


def new_publisher_old_consumer(backend: MessagingBackend, kind: str) -> None:
    """A version 2 message is dead-lettered by a version 1 consumer, with the reason."""
    old, new = Deployment(kind, 1), Deployment(kind, 2)
    with route(backend) as orders:
        orders.publish(new, order_id=8, amount_cents=990, currency="USD")
        handled, dead = orders.consume(old)
        assert handled == []
        assert len(dead) == 1
        reason = dead[0].headers[FAILURE_REASON]
        assert f"{MANIFEST} version 2 is newer than version 1" in reason
        assert dead[0].headers[SCHEMA_VERSION_HEADER] == "2"


def new_publisher_old_consumer_decoding_newer(backend: MessagingBackend, kind: str) -> None:
    """With ``newer_versions="decode"`` the old consumer reads what it knows of version 2."""
    old, new = Deployment(kind, 1, newer_versions="decode"), Deployment(kind, 2)
    with route(backend) as orders:
        orders.publish(new, order_id=9, amount_cents=500, currency="USD")
        handled, dead = orders.consume(old)
        assert not dead
        assert handled == [old.order(order_id=9, amount_cents=500)]


SCENARIOS = (
    old_publisher_new_consumer,
    new_publisher_old_consumer,
    new_publisher_old_consumer_decoding_newer,
)
