"""The connection to Redis cut mid-stream, through a TCP relay the test starts in front of
the shared Redis: a consumer (threaded, and asyncio on ``AsyncRedisStreamsBackend``) loses
nothing and handles again at most what it had in flight."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from melange import Consumer, FailurePolicy, MessageDispatcher
from melange.aio import AsyncMessageDispatcher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend
from melange.models import Message
from melange.serializers.json import JsonSerializer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

COUNT = 300
BATCH = 10


def _tcp_proxy_class() -> Any:
    # The relay of the RabbitMQ tests, loaded by path: it forwards any TCP service.
    path = Path(__file__).resolve().parent.parent / "rabbitmq" / "conftest.py"
    spec = importlib.util.spec_from_file_location("melange_tests_rabbitmq_relay", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TcpProxy


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Any]:
    relay = _tcp_proxy_class()(("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0])))
    yield relay
    relay.close()


class Handled:
    """Counts handler runs per message number, thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def __call__(self, payload: dict[str, int]) -> None:
        time.sleep(0.002)
        with self._lock:
            self.counts[payload["n"]] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def distinct(self) -> int:
        with self._lock:
            return len(self.counts)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def cut_twice(proxy: Any, handled: Handled) -> None:
    """Cut every relayed connection a third and two thirds of the way, the second time
    refusing new connections for a second (an outage, not only a reset)."""
    wait_for(lambda: handled.distinct() >= COUNT // 3, 60, "a third of the messages")
    assert proxy.cut() > 0
    wait_for(lambda: handled.distinct() >= 2 * COUNT // 3, 60, "two thirds of the messages")
    proxy.refusing.set()
    proxy.cut()
    time.sleep(1.0)
    proxy.refusing.clear()


@pytest.mark.parametrize("driver", ["threaded", "asyncio"])
def test_a_connection_cut_mid_stream_loses_nothing(
    driver: str,
    proxy: Any,
    prefix: str,
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    direct = make_streams()
    MessagingBackendFactory(direct).init_queue("work", dead_letter_queue_name="work-dlq")
    messages = [Message.create(json.dumps({"n": n}), "json", 1) for n in range(COUNT)]
    direct.publish_batch_to_queue(messages, direct.get_queue("work"))
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    handled = Handled()
    policy = FailurePolicy.no_delay(max_attempts=5)
    errors: list[BaseException] = []

    if driver == "threaded":
        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=make_streams(url=via_proxy, visibility_timeout=5),
            consumers=[Consumer(handled, name="counter")],
            failure_policy=policy,
        )

        def run() -> None:
            try:
                dispatcher.consume_loop(
                    "work", workers=4, max_messages=BATCH, install_signal_handlers=False
                )
            except BaseException as exc:  # reported by the test
                errors.append(exc)

    else:
        aio = AsyncMessageDispatcher(
            JsonSerializer(),
            backend=AsyncRedisStreamsBackend(via_proxy, prefix=prefix, visibility_timeout=5),
            consumers=[Consumer(handled, name="counter")],
            failure_policy=policy,
        )
        dispatcher = aio

        async def main() -> None:
            try:
                await aio.consume_loop(
                    "work", concurrency=4, max_messages=BATCH, install_signal_handlers=False
                )
            finally:
                await aio.backend.aclose()  # type: ignore[attr-defined]

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        cut_twice(proxy, handled)
        wait_for(lambda: handled.distinct() == COUNT, 90, "every message")
        wait_for(lambda: direct.queue_depth("work") == 0, 30, "every acknowledgement")
    finally:
        dispatcher.stop()
        thread.join(30)
    assert not errors, errors
    repeated = {n for n, c in handled.counts.items() if c > 1}
    print(
        f"\n[{driver}] two connection cuts: {COUNT} of {COUNT} handled, "
        f"{len(repeated)} handled twice (bound: in flight, 2 x {BATCH})"
    )
    assert set(handled.counts) == set(range(COUNT))
    assert len(repeated) <= 2 * BATCH
    assert direct.queue_depth("work-dlq") == 0
