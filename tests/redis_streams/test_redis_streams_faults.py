"""The connection to Redis cut mid-stream, through a TCP relay the test starts in front of
the shared Redis: a consumer (threaded, and asyncio on ``AsyncRedisStreamsBackend``) loses
nothing and handles again at most what it had in flight (the scenario is
``tests/reliability/fault_scenarios.py``'s)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend
from melange.models import Message
from tcp_relay import TcpRelay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))
from fault_scenarios import connection_cut_loses_nothing

pytestmark = [pytest.mark.redis, pytest.mark.slow]

COUNT = 300
BATCH = 10


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TcpRelay]:
    relay = TcpRelay(("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0])))
    yield relay
    relay.close()


@pytest.mark.parametrize("driver", ["threaded", "asyncio"])
def test_a_connection_cut_mid_stream_loses_nothing(
    driver: str,
    proxy: TcpRelay,
    prefix: str,
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    direct = make_streams()
    MessagingBackendFactory(direct).init_queue("work", dead_letter_queue_name="work-dlq")
    messages = [Message.create(json.dumps({"n": n}), "json", 1) for n in range(COUNT)]
    direct.publish_batch_to_queue(messages, direct.get_queue("work"))
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"

    def backend() -> RedisStreamsBackend | AsyncRedisStreamsBackend:
        if driver == "threaded":
            return make_streams(url=via_proxy, visibility_timeout=5)
        return AsyncRedisStreamsBackend(via_proxy, prefix=prefix, visibility_timeout=5)

    connection_cut_loses_nothing(
        proxy,
        driver,
        backend,
        "work",
        COUNT,
        "redis-streams",
        batch=BATCH,
        repeat_bound=2 * BATCH,
        acknowledged=lambda: direct.queue_depth("work") == 0,
    )
    assert direct.queue_depth("work-dlq") == 0
