"""The embedded backends (in-memory and SQLite) follow one set of broker rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import ConfigurationError
from melange.models import FAILURE_QUEUE, FAILURE_REASON, Message


@pytest.fixture
def backend(embedded_backend: MessagingBackend) -> MessagingBackend:
    return embedded_backend


def label(backend: MessagingBackend) -> str:
    return "in-memory" if isinstance(backend, InMemoryMessagingBackend) else "SQLite"


def test_a_standard_queue_dead_letters_into_a_fifo_queue_without_losing_the_message(
    backend: MessagingBackend,
) -> None:
    queue, dlq = backend.declare_queue("work", dead_letter_queue_name="work-dlq.fifo")
    assert dlq is not None
    backend.publish_to_queue(Message.create('"x"', "json", 1), queue)
    [got] = backend.retrieve_messages(queue)
    assert backend.dead_letter(got, {FAILURE_REASON: "gave up"})
    assert backend.retrieve_messages(queue) == []
    [dead] = backend.retrieve_messages(dlq)
    assert (dead.message_id, dead.content) == (got.message_id, '"x"')
    # One group named after the source queue keeps the order of failures.
    assert dead.group_id == "work"
    assert dead.headers[FAILURE_REASON] == "gave up"
    assert dead.headers[FAILURE_QUEUE] == "work"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"visibilty_timeout": 3}, "unknown option(s) ['visibilty_timeout'] for {label} queue"),
        ({"visibility_timeout": 0}, "visibility_timeout of queue 'q' must be a number above 0"),
        ({"delay_seconds": -1}, "delay_seconds of queue 'q' must be a number at least 0"),
        ({"max_receive_count": 0}, "max_receive_count must be a whole number at least 1"),
        ({"filter_events": "OrderPlaced"}, "filter_events must be a list of manifests"),
    ],
)
def test_bad_queue_options_are_refused_the_same_way_before_anything_is_created(
    backend: MessagingBackend, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        backend.declare_queue("q", **options)
    assert error.format(label=label(backend)) in str(refused.value)
    with pytest.raises(Exception, match="q"):
        backend.get_queue("q")


def test_a_queue_keeps_its_type_and_its_messages_when_declared_again(
    backend: MessagingBackend,
) -> None:
    queue, _ = backend.declare_queue("orders", visibility_timeout=5)
    backend.publish_to_queue(Message.create('"x"', "json", 1), queue)
    with pytest.raises(ConfigurationError, match="already exists as a standard queue"):
        backend.declare_queue("orders", fifo=True)
    backend.declare_queue("orders", visibility_timeout=9)
    assert len(backend.retrieve_messages(queue)) == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_fifo_group_keeps_its_order_when_its_head_comes_back_after_a_later_message(
    kind: str, tmp_path: Path
) -> None:
    # Both messages of a group received together; the head is given back with a delay (the
    # group stays blocked), the next at once. When the head's delay is over it must go out
    # first, although the other became visible earlier.
    clock = _Clock()
    made: MessagingBackend = (
        InMemoryMessagingBackend(clock=clock)
        if kind == "memory"
        else SQLiteBackend(tmp_path / "broker.db", clock=clock)
    )
    try:
        queue, _ = made.declare_queue("orders.fifo", dead_letter_queue_name="orders-dlq.fifo")
        for n in (1, 2):
            message = Message.create(f'"{n}"', "json", 1)
            message.group_id, message.deduplication_id = "g", f"m{n}"
            made.publish_to_queue(message, queue)
        head, second = made.retrieve_messages(queue, max_messages=10)
        assert (head.content, second.content) == ('"1"', '"2"')
        made.release(head, 6.0)
        made.release(second, 0.0)
        assert made.retrieve_messages(queue) == [], "the group waits for its head"
        clock.now += 6.5
        received = made.retrieve_messages(queue, max_messages=1)
        assert [m.content for m in received] == ['"1"']
        made.acknowledge(received[0])
        assert [m.content for m in made.retrieve_messages(queue)] == ['"2"']
    finally:
        made.close_connection()
