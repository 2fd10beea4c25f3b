"""The simulation against the real thing: the same schedule, run by the real dispatchers.

A sample of scenarios (their handler behaviours, FIFO groups, consumers, policy) is run twice:
in the simulator, and by the real threaded and asyncio dispatchers on real backends (in
memory, SQLite, RabbitMQ), with consumers that play the same behaviours. Each message must
end the same way in both: handled, or dead-lettered after the same number of attempts. A
simulator that drifted from what the dispatchers and backends do would fail here.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from melange import JsonSerializer, MessageDispatcher
from melange.aio import AsyncMessageDispatcher
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy
from melange.models import FAILURE_ATTEMPTS, Message
from melange.simulation import Scenario, simulate
from melange.simulation.processes import HandlerError, HostileError, NonRetryable
from service_check import require_service

#: Behaviours a real run can play without faults (no process exit, no hour-long handler).
PLAYABLE = ("fail", "hostile", "non_retryable", "poison")


def playable(seed: int) -> Scenario:
    """The scenario of ``seed`` without faults, slow or exiting handlers, on one process."""
    scenario = Scenario.generate(seed)
    behaviours = {
        index: spec
        for index, spec in scenario.behaviours.items()
        if spec.partition(":")[0] in PLAYABLE
    }
    return replace(
        scenario,
        faults=(),
        processes=1,
        initial_delay=0.0,  # real time: retries at once
        dead_letter_queue=True,
        behaviours=behaviours,
        messages=min(scenario.messages, 12),
        semantics="lease",
    )


def simulated_fates(scenario: Scenario) -> dict[int, str]:
    outcome = simulate(scenario)
    assert outcome.ok, outcome.report()
    history = outcome.history
    dead = {m.message_id: m.headers.get(FAILURE_ATTEMPTS) for m in history.dead_letters}
    return {
        index: _fate(dead.get(f"{scenario.seed}-{index}"), history.handled(index))
        for index in range(scenario.messages)
    }


def _fate(dead_after: str | None, handled: bool) -> str:
    if dead_after is not None:
        return f"dead-lettered after {dead_after}"
    return "handled" if handled else "left"


class Player(Consumer):
    """A consumer playing the scenario's behaviours, counting its runs per message."""

    def __init__(self, scenario: Scenario, name: str, handled: dict[int, set[str]]) -> None:
        super().__init__(name=name)
        self.scenario = scenario
        self.runs: dict[int, int] = {}
        self.handled = handled
        self.lock = threading.Lock()

    def process(self, message: Any, **kwargs: Any) -> None:
        index = int(message["i"])
        with self.lock:
            number = self.runs[index] = self.runs.get(index, 0) + 1
        behaviour, arg = self.scenario.behaviour(index)
        if behaviour == "fail" and number <= arg:
            raise HandlerError(f"run {number} of message {index} failed")
        if behaviour == "hostile" and number <= arg:
            raise HostileError()
        if behaviour == "non_retryable":
            raise NonRetryable(f"message {index} can never be handled")
        with self.lock:
            self.handled.setdefault(index, set()).add(self.name)


def real_fates(
    scenario: Scenario, backend: MessagingBackend, driver: str, wait: Callable[[], None]
) -> dict[int, str]:
    """Run ``scenario`` with the real ``driver`` on ``backend``; each message's fate."""
    tag = uuid.uuid4().hex[:8]
    fifo = ".fifo" if scenario.fifo else ""
    queue, dlq = backend.declare_queue(
        f"faithful-{tag}{fifo}", dead_letter_queue_name=f"faithful-{tag}-dlq{fifo}"
    )
    assert dlq is not None
    handled: dict[int, set[str]] = {}
    consumers = [Player(scenario, f"consumer{n}", handled) for n in range(scenario.consumers)]
    policy = FailurePolicy(
        max_attempts=scenario.max_attempts,
        immediate_retries=scenario.immediate_retries,
        initial_delay=0.0,
        jitter=0.0,
        non_retryable=(NonRetryable,),
    )
    for index in range(scenario.messages):
        poison = scenario.behaviour(index)[0] == "poison"
        message = Message(
            f"{scenario.seed}-{index}", json.dumps({"i": index}), None, 99 if poison else 1, "sim"
        )
        if scenario.fifo:
            message.group_id = f"g{index % scenario.groups}"
            message.deduplication_id = message.message_id
        backend.publish_to_queue(message, queue)
    dead: dict[str, str | None] = {}

    def done() -> bool:
        for message in backend.retrieve_messages(dlq, max_messages=10, wait_seconds=0.1):
            dead[message.message_id] = message.headers.get(FAILURE_ATTEMPTS)
            backend.acknowledge(message)
        return all(
            f"{scenario.seed}-{index}" in dead or len(handled.get(index, ())) == len(consumers)
            for index in range(scenario.messages)
        )

    kwargs: dict[str, Any] = {"backend": backend, "consumers": consumers, "failure_policy": policy}
    if driver == "threaded":
        dispatcher: MessageDispatcher = MessageDispatcher(JsonSerializer(), **kwargs)

        def run() -> None:
            dispatcher.consume_loop(
                queue.name, workers=scenario.workers, install_signal_handlers=False
            )
    else:
        dispatcher = AsyncMessageDispatcher(JsonSerializer(), **kwargs)

        def run() -> None:
            asyncio.run(
                dispatcher.consume_loop(  # type: ignore[arg-type]
                    queue.name, concurrency=scenario.workers, install_signal_handlers=False
                )
            )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while not done():
            assert time.monotonic() < deadline, f"not settled in 60 s: {dead}, {handled}"
            wait()
    finally:
        dispatcher.stop()
        thread.join(15)
        dispatcher.close()
        for made in (queue, dlq):
            backend.delete_queue(made)
    return {
        index: _fate(
            dead.get(f"{scenario.seed}-{index}"), len(handled.get(index, ())) == len(consumers)
        )
        for index in range(scenario.messages)
    }


SEEDS = [seed for seed in range(0, 200) if Scenario.generate(seed).behaviours][:10]


@pytest.fixture(params=["memory", "sqlite"])
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    made: MessagingBackend = (
        InMemoryMessagingBackend()
        if request.param == "memory"
        else SQLiteBackend(tmp_path / "broker.db")
    )
    yield made
    made.close_connection()


@pytest.mark.parametrize("driver", ["threaded", "asyncio"])
@pytest.mark.parametrize("seed", SEEDS)
def test_each_message_ends_as_simulated_on_the_embedded_backends(
    seed: int, driver: str, embedded: MessagingBackend
) -> None:
    scenario = playable(seed)
    expected = simulated_fates(scenario)
    assert real_fates(scenario, embedded, driver, lambda: time.sleep(0.02)) == expected


@pytest.mark.parametrize("driver", ["threaded", "asyncio"])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_each_message_ends_as_simulated_on_rabbitmq(seed: int, driver: str) -> None:
    host, port = require_service("rabbitmq")
    from melange.backends.rabbitmq import RabbitMQBackend

    # RabbitMQ refuses FIFO queues (see its capabilities): the same scenario on a standard one.
    scenario = replace(playable(seed), fifo=False)
    expected = simulated_fates(scenario)
    backend = RabbitMQBackend(host=host, port=port)
    try:
        assert real_fates(scenario, backend, driver, lambda: time.sleep(0.05)) == expected
    finally:
        backend.close_connection()
