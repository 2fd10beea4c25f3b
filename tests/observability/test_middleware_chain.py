"""The dispatcher's middleware chain, as the observability middleware rely on it: each hook
runs for the middlewares that implement it, in order, and a failing middleware never stops
a message nor the other middlewares."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.decisions import Outcome, Verdict
from melange.dispatch.middleware import Middleware
from melange.dispatch.threaded import MessageDispatcher
from melange.models import Message
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer


class Journal(Middleware):
    """Writes down every hook it sees, under its name."""

    def __init__(self, name: str, journal: list[str]) -> None:
        self.name = name
        self.journal = journal

    def message_received(self, message: Message, queue: str) -> None:
        self.journal.append(f"{self.name} received")

    @contextmanager
    def consumer_call(self, message: Message, consumer: Consumer) -> Iterator[None]:
        self.journal.append(f"{self.name} enter")
        try:
            yield
        finally:
            self.journal.append(f"{self.name} exit")

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        self.journal.append(f"{self.name} finished {outcome.value}")

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        self.journal.append(f"{self.name} settled {verdict.action.value}")


class OnlySettled(Middleware):
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        self.journal.append("settled only")


class Broken(Middleware):
    """Fails in every hook."""

    def message_received(self, message: Message, queue: str) -> None:
        raise RuntimeError("received")

    def consumer_call(self, message: Message, consumer: Consumer) -> Any:
        raise RuntimeError("call")

    def consumer_finished(self, *args: Any) -> None:
        raise RuntimeError("finished")

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        raise RuntimeError("settled")


def _consume_one(middleware: list[Middleware], consumer: Any) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("jobs")
    QueuePublisher(JsonSerializer(), backend).publish("jobs", {"job": 1})
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(consumer)], middleware=middleware
    )
    try:
        dispatcher.consume_event("jobs")
    finally:
        dispatcher.close()


def test_hooks_run_in_order_and_contexts_nest() -> None:
    journal: list[str] = []
    _consume_one(
        [Journal("a", journal), OnlySettled(journal), Journal("b", journal)],
        lambda payload: journal.append("consumer"),
    )
    assert journal == [
        "a received", "b received",
        "a enter", "b enter", "consumer", "b exit", "a exit",
        "a finished succeeded", "b finished succeeded",
        "a settled ack", "settled only", "b settled ack",
    ]  # fmt: skip


def test_one_wrapping_middleware_sees_the_consumer_fail() -> None:
    journal: list[str] = []

    def fail(payload: Any) -> None:
        raise ValueError("no")

    _consume_one([Journal("a", journal)], fail)
    assert journal[:4] == ["a received", "a enter", "a exit", "a finished failed"]
    assert journal[4] == "a settled retry"


def test_a_failing_middleware_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    with caplog.at_level(logging.ERROR, logger="melange.dispatcher"):
        _consume_one([Broken(), Journal("a", journal)], lambda payload: journal.append("consumer"))
    assert journal == [
        "a received", "a enter", "consumer", "a exit", "a finished succeeded", "a settled ack",
    ]  # fmt: skip
    failed = {record.getMessage().rsplit(" ", 3)[-2].rstrip(";") for record in caplog.records}
    assert failed == {"message_received", "consumer_call", "consumer_finished", "message_settled"}
