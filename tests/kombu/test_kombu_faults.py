"""Faults on the kombu backend, on kombu's Redis and AMQP transports:

- a consumer process SIGKILLed mid-stream loses nothing and runs again at most its batch,
  and with the Redis deduplication cache nothing it had marked done;
- a consumer process stopped with SIGTERM drains: nothing lost or repeated;
- the connection to the broker cut mid-stream (twice, the second time an outage of a
  second), through a TCP relay the test starts in front of the shared broker, loses nothing
  and runs again at most what was in flight, under the threaded and the asyncio dispatcher.

The scenarios are the other backends': ``tests/reliability/fault_scenarios.py``.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu_support import delete_redis_prefix, transport_url

from melange.backends.factory import MessagingBackendFactory
from melange.backends.kombu import AsyncKombuBackend, KombuBackend
from melange.models import Message
from tcp_relay import TcpRelay

_TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_TESTS / "reliability"))
from fault_scenarios import (  # noqa: E402
    connection_cut_loses_nothing,
    sigkill_loses_nothing,
    sigkill_with_deduplication_repeats_nothing_done,
    sigterm_drains,
)

pytestmark = pytest.mark.slow

COUNT = 120
BATCH = 10


class KombuWork:
    """A queue of the test's own, with its dead-letter queue, holding ``{"n": i}`` messages
    (the :class:`fault_scenarios.WorkQueue` of the kombu backend)."""

    def __init__(self, transport: str, count: int, visibility: float) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.spec: dict[str, Any] = {
            "kind": "kombu",
            "url": transport_url(transport),
            "prefix": f"melange-kombu-fault-{suffix}:",
            "queue": f"work-{suffix}",
            "visibility_timeout": visibility,
        }
        self.transport = transport
        self.queue: str = self.spec["queue"]
        self.dlq = self.queue + "-dlq"
        # On AMQP only the management API counts messages held by consumers (sampled).
        self.counts_in_flight = transport == "redis"
        self.backend = KombuBackend(
            self.spec["url"], prefix=self.spec["prefix"], visibility_timeout=visibility
        )
        queue, _ = self.backend.declare_queue(self.queue, dead_letter_queue_name=self.dlq)
        messages = [Message.create(json.dumps({"n": i}), "json", 1) for i in range(count)]
        self.backend.publish_batch_to_queue(messages, queue)

    def left(self, queue: str | None = None) -> int:
        stats = self.backend.queue_stats(queue or self.queue)
        return stats.total if self.counts_in_flight else int(stats.ready or 0)

    def close(self) -> None:
        for name in (self.queue, self.dlq):
            self.backend.delete_queue(self.backend.get_queue(name))
        self.backend.close_connection()
        if self.transport == "redis":
            delete_redis_prefix(self.spec["prefix"])


@pytest.fixture
def work(transport: str) -> Iterator[Callable[..., KombuWork]]:
    made: list[KombuWork] = []

    def make(count: int, visibility: float = 2.0) -> KombuWork:
        made.append(KombuWork(transport, count, visibility))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_a_sigkilled_consumer_loses_nothing_and_repeats_at_most_its_batch(
    transport: str, work: Callable[..., KombuWork], tmp_path: Path
) -> None:
    sigkill_loses_nothing(work(COUNT), tmp_path, COUNT, f"kombu+{transport}", batch=BATCH)


@pytest.mark.redis
def test_a_sigkilled_consumer_with_deduplication_repeats_nothing_marked_done(
    transport: str, work: Callable[..., KombuWork], tmp_path: Path
) -> None:
    sigkill_with_deduplication_repeats_nothing_done(
        work(COUNT), tmp_path, COUNT, f"kombu+{transport}", lease=2.0
    )


def test_sigterm_drains_with_nothing_lost_or_repeated(
    transport: str, work: Callable[..., KombuWork], tmp_path: Path
) -> None:
    # A lease of 30 s: what the first process did not finish must come back because it gave
    # it back, not because its lease ran out.
    sigterm_drains(
        work(COUNT, visibility=30.0), tmp_path, COUNT, f"kombu+{transport}", 4, rest_timeout=20
    )


@pytest.fixture
def relay(transport: str) -> Iterator[TcpRelay]:
    port = 6379 if transport == "redis" else 5672
    made = TcpRelay(("127.0.0.1", port))
    yield made
    made.close()


@pytest.mark.parametrize("driver", ["threaded", "asyncio"])
def test_a_connection_cut_mid_stream_loses_nothing(
    driver: str, transport: str, relay: TcpRelay, prefix: str
) -> None:
    url = transport_url(transport)
    direct = KombuBackend(url, prefix=prefix)
    queue_name = f"work-{uuid.uuid4().hex[:10]}"
    MessagingBackendFactory(direct).init_queue(
        queue_name, dead_letter_queue_name=queue_name + "-dlq"
    )
    total = COUNT * 2
    messages = [Message.create(json.dumps({"n": n}), "json", 1) for n in range(total)]
    direct.publish_batch_to_queue(messages, direct.get_queue(queue_name))
    via_relay = url.replace(":6379/", f":{relay.port}/").replace(":5672/", f":{relay.port}/")
    # py-amqp notices some resets only when a read times out: short I/O timeouts keep the
    # test short (the default is 10 s).
    timeouts = (
        {"socket_timeout": 2.0}
        if transport == "redis"
        else {"read_timeout": 2.0, "write_timeout": 2.0}
    )
    options: dict[str, Any] = {
        "prefix": prefix,
        "visibility_timeout": 3,
        "retries": 20,
        "transport_options": timeouts,
    }

    def backend() -> KombuBackend | AsyncKombuBackend:
        if driver == "threaded":
            return KombuBackend(via_relay, **options)
        return AsyncKombuBackend(via_relay, **options)

    try:
        connection_cut_loses_nothing(
            relay,
            driver,
            backend,
            queue_name,
            total,
            f"kombu+{transport}",
            batch=BATCH,
            repeat_bound=2 * 4 * BATCH,  # in flight: 2 cuts x a batch per worker
            acknowledged=(
                (lambda: direct.queue_depth(queue_name) == 0) if transport == "redis" else None
            ),
        )
        # Once the consumer is gone, nothing is left: everything was acknowledged.
        assert direct.queue_stats(queue_name).ready == 0
        assert direct.queue_stats(queue_name + "-dlq").ready == 0
    finally:
        for name in (queue_name, queue_name + "-dlq"):
            direct.delete_queue(direct.get_queue(name))
        direct.close_connection()
