"""Process-wide middleware: run by every dispatcher of the process, threaded or asyncio."""

from __future__ import annotations

import asyncio

import pytest

from melange.aio import AsyncMessageDispatcher
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.decisions import Verdict
from melange.dispatch.middleware import (
    Middleware,
    add_process_middleware,
    remove_process_middleware,
)
from melange.dispatch.threaded import MessageDispatcher
from melange.models import Message
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer


class Settlements(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        self.seen.append((queue, verdict.action.value))


def _backend_with_one_message() -> InMemoryMessagingBackend:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("jobs")
    QueuePublisher(JsonSerializer(), backend).publish("jobs", {"job": 1})
    return backend


def test_a_dispatcher_built_without_it_runs_it_after_its_own() -> None:
    own, process_wide = Settlements(), Settlements()
    order: list[str] = []
    own.message_settled = lambda *args: order.append("own")  # type: ignore[method-assign]
    process_wide.message_settled = lambda *args: order.append("process")  # type: ignore[method-assign]
    backend = _backend_with_one_message()
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(lambda m: None)], middleware=[own]
    )
    add_process_middleware(process_wide)
    try:
        dispatcher.consume_event("jobs")
    finally:
        remove_process_middleware(process_wide)
    assert order == ["own", "process"]


def test_the_asyncio_dispatcher_runs_it_too() -> None:
    watcher = Settlements()
    backend = _backend_with_one_message()
    dispatcher = AsyncMessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(lambda m: None)]
    )
    add_process_middleware(watcher)
    try:
        asyncio.run(dispatcher.consume_event("jobs"))
    finally:
        remove_process_middleware(watcher)
    assert watcher.seen == [("jobs", "ack")]


def test_once_removed_it_sees_nothing() -> None:
    watcher = Settlements()
    add_process_middleware(watcher)
    remove_process_middleware(watcher)
    backend = _backend_with_one_message()
    MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(lambda m: None)]
    ).consume_event("jobs")
    assert watcher.seen == []


def test_only_middleware_is_accepted() -> None:
    with pytest.raises(TypeError, match="subclass"):
        add_process_middleware(object())  # type: ignore[arg-type]
