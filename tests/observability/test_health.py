"""Liveness and readiness probes of a dispatcher over HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from obs_support import load

from melange.aio import AsyncMessageDispatcher
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.threaded import MessageDispatcher
from melange.observability.health import Health
from melange.observability.http import ProbeServer
from melange.serializers.json import JsonSerializer
from service_check import require_service


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.loads(refused.read())


def wait_for(port: int, path: str, status: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got, body = probe(port, path)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{path} stayed {got} {body}, not {status}"
        time.sleep(0.1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_fails_when_the_loop_stops_turning() -> None:
    dispatcher = MessageDispatcher(JsonSerializer(), backend=InMemoryMessagingBackend())
    clock = FakeClock()
    clock.now = dispatcher.last_turn
    health = Health(dispatcher, liveness_timeout=10, clock=clock)
    assert health.live() == (True, "ok")
    clock.now += 11
    ok, reason = health.live()
    assert not ok and "11s" in reason


def test_both_drivers_note_each_turn_of_the_loop() -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("idle")
    threaded = MessageDispatcher(JsonSerializer(), backend=backend)
    before = threaded.last_turn
    loop = threading.Thread(
        target=threaded.consume_loop,
        args=("idle",),
        kwargs={"install_signal_handlers": False, "wait_seconds": 0.05},
    )
    loop.start()
    time.sleep(0.3)
    turned = threaded.last_turn
    threaded.stop()
    loop.join(5)
    assert turned > before + 0.1

    async def run_async() -> tuple[float, float]:
        dispatcher = AsyncMessageDispatcher(JsonSerializer(), backend=backend)
        start = dispatcher.last_turn
        task = asyncio.create_task(
            dispatcher.consume_loop("idle", install_signal_handlers=False, wait_seconds=0.05)
        )
        await asyncio.sleep(0.3)
        end = dispatcher.last_turn
        dispatcher.stop()
        await task
        return start, end

    start, end = asyncio.run(run_async())
    assert end > start + 0.1


def test_a_stopping_dispatcher_is_not_ready() -> None:
    dispatcher = MessageDispatcher(JsonSerializer(), backend=InMemoryMessagingBackend())
    health = Health(dispatcher)
    assert health.ready() == (True, "ok")
    dispatcher.stop()
    assert health.ready() == (False, "stopping")


@pytest.fixture
def proxy() -> Iterator[Any]:
    address = require_service("rabbitmq")
    relay = load("melange_tests_rabbitmq_fixtures_obs", "rabbitmq/conftest.py").TcpProxy(address)
    yield relay
    relay.close()


@pytest.mark.rabbitmq
def test_readiness_follows_the_broker_connection(proxy: Any) -> None:
    from melange.backends.rabbitmq import RabbitMQBackend

    backend = RabbitMQBackend(
        host="127.0.0.1",
        port=proxy.port,
        connection_name=f"melange-obs-{uuid.uuid4().hex[:10]}",
        reconnect_max_delay=0.5,
    )
    queue = f"obs-health-{uuid.uuid4().hex[:10]}"
    declared, _ = backend.declare_queue(queue)
    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handled.append)]
    )
    loop = threading.Thread(
        target=dispatcher.consume_loop, args=(queue,), kwargs={"install_signal_handlers": False}
    )
    try:
        with ProbeServer(0, host="127.0.0.1") as server:
            Health(dispatcher, liveness_timeout=30).serve(server)
            loop.start()
            wait_for(server.port, "/readyz", 200)
            assert probe(server.port, "/livez")[0] == 200

            proxy.refusing.set()  # the broker is unreachable: cut, and no reconnection
            assert proxy.cut() >= 2
            body = wait_for(server.port, "/readyz", 503)
            assert body == {"status": "fail", "reason": "not connected to the broker"}
            assert probe(server.port, "/livez")[0] == 200  # the loop goes on turning

            proxy.refusing.clear()
            wait_for(server.port, "/readyz", 200)
            assert probe(server.port, "/livez")[0] == 200
    finally:
        dispatcher.stop()
        loop.join(30)
        dispatcher.close()
        backend.delete_queue(declared)
        backend.close_connection()
