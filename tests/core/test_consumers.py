"""Consumers: callbacks, accepts, single dispatch by type, and stable names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from melange.consumers import Consumer, SingleDispatchConsumer, consumer, listener
from melange.exceptions import ConfigurationError


@dataclass
class OrderCreated:
    id: int


@dataclass
class PriorityOrderCreated(OrderCreated):
    pass


@dataclass
class OrderCancelled:
    id: int


class OrderConsumer(SingleDispatchConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    @consumer
    def on_created(self, event: OrderCreated) -> None:
        self.seen.append(("created", event))

    @listener
    def on_priority(self, event: PriorityOrderCreated) -> None:
        self.seen.append(("priority", event))


def test_consumer_calls_on_message_and_accepts_everything_by_default() -> None:
    got: list[Any] = []
    c = Consumer(on_message=got.append)
    assert c.accepts({"any": "thing"})
    c.process({"a": 1})
    assert got == [{"a": 1}]


def test_consumer_accepts_callback_sees_the_deserialized_message() -> None:
    c = Consumer(on_message=print, accepts=lambda m: m.get("kind") == "x")
    assert c.accepts({"kind": "x"})
    assert not c.accepts({"kind": "y"})


def test_consumer_without_callback_or_process_says_what_to_do() -> None:
    with pytest.raises(NotImplementedError, match="override process"):
        Consumer().process({})


def test_single_dispatch_routes_by_most_specific_type() -> None:
    c = OrderConsumer()
    assert c.accepts(OrderCreated(1))
    assert c.accepts(PriorityOrderCreated(2))
    assert not c.accepts(OrderCancelled(3))
    c.process(OrderCreated(1))
    c.process(PriorityOrderCreated(2))
    assert c.seen == [("created", OrderCreated(1)), ("priority", PriorityOrderCreated(2))]


def test_single_dispatch_handlers_are_inherited_and_extended() -> None:
    class WithCancel(OrderConsumer):
        @consumer
        def on_cancelled(self, event: OrderCancelled) -> None:
            self.seen.append(("cancelled", event))

    c = WithCancel()
    c.process(OrderCancelled(3))
    c.process(OrderCreated(1))
    assert [kind for kind, _ in c.seen] == ["cancelled", "created"]
    assert not OrderConsumer().accepts(OrderCancelled(3))


def test_single_dispatch_requires_a_class_annotation() -> None:
    class Bad(SingleDispatchConsumer):
        @consumer
        def on_anything(self, event) -> None:  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(ConfigurationError, match="class annotation"):
        Bad().accepts(object())


def test_default_names_tell_callbacks_apart_and_match_the_released_key_for_subclasses() -> None:
    def pay(message: Any) -> None: ...

    def refund(message: Any) -> None: ...

    a, b = Consumer(on_message=pay), Consumer(on_message=refund)
    assert a.name != b.name
    assert "pay" in a.name and "refund" in b.name
    assert OrderConsumer().name == f"{__name__}.OrderConsumer"
    assert Consumer(on_message=pay, name="payments").name == "payments"


def test_two_lambdas_get_different_names() -> None:
    first = Consumer(on_message=lambda m: None)
    second = Consumer(on_message=lambda m: None)
    assert first.name != second.name
