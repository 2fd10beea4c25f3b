"""Redis Streams contenders: Melange's backend and raw redis-py doing the same work.

Both publish one message per ``XADD`` round trip (Melange's through its short publish script,
which also checks the queue exists and, on a FIFO queue, the message's group), read through a
consumer group in batches of 10 (``XREADGROUP``, blocking when the stream is empty: Melange
sends its receive script behind the block, in the same round trip), and settle each message
after its handler ran by acknowledging and deleting its entry (``XACK`` and ``XDEL``), so the
stream never grows. Melange adds its leases (a sorted set written with each delivery) and the
delivery-count check of every settlement; raw redis-py has neither, so a consumer that dies
leaves its messages pending until someone claims them by hand.
"""

from __future__ import annotations

import json
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.brokers import MelangeBrokerContender
from benchmarks.workload import Contender, Payload, Tally

URL = "redis://127.0.0.1:6379/0"
#: Messages one read takes, as Melange's consume loop asks for.
BATCH = 10
#: Seconds without a message after which a consumer gives up (a broken contender).
IDLE_TIMEOUT = 60.0


def key_prefix(params: dict[str, Any], default: str) -> str:
    """The prefix of a contender's keys."""
    return f"{params.get('queue', default)}:"


def delete_keys(prefix: str) -> None:
    """Delete every key of a contender (leftovers of an interrupted run too)."""
    import redis

    with redis.Redis.from_url(URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


class RawRedisStreams(Contender):
    """redis-py: ``XADD`` per publish, ``XREADGROUP`` batches, ``XACK`` and ``XDEL`` each."""

    label = "raw redis-py"

    def setup(self) -> dict[str, str]:
        import redis

        self.prefix = key_prefix(self.params, "bench-redis-raw")
        delete_keys(self.prefix)
        self.stream = f"{self.prefix}stream"
        self.pub = redis.Redis.from_url(URL, decode_responses=True)
        self.sub = redis.Redis.from_url(URL, decode_responses=True)
        self.pub.xgroup_create(self.stream, "bench", id="0", mkstream=True)
        self.consumer = uuid.uuid4().hex[:8]
        return {"redis-py": version("redis")}

    def purge(self) -> None:
        self.pub.delete(self.stream)
        self.pub.xgroup_create(self.stream, "bench", id="0", mkstream=True)

    def publish_one(self, payload: Payload) -> None:
        self.pub.xadd(self.stream, {"i": uuid.uuid4().hex, "b": json.dumps(payload), "m": "json"})

    def consume(self, n: int, handle: Tally) -> None:
        while not handle.complete:
            read = self.sub.xreadgroup(
                "bench",
                self.consumer,
                {self.stream: ">"},
                count=BATCH,
                block=int(IDLE_TIMEOUT * 1000),
            )
            if not read:
                raise TimeoutError(f"no message for {IDLE_TIMEOUT}s on {self.stream}")
            for entry_id, fields in read[0][1]:
                handle(json.loads(fields["b"]))
                pipe = self.sub.pipeline(transaction=True)
                pipe.xack(self.stream, "bench", entry_id)
                pipe.xdel(self.stream, entry_id)
                pipe.execute()

    def teardown(self) -> None:
        delete_keys(self.prefix)
        self.pub.close()
        self.sub.close()


class MelangeRedisStreams(MelangeBrokerContender):
    """Melange on ``RedisStreamsBackend`` (``AsyncRedisStreamsBackend`` for asyncio)."""

    module = "melange.backends.redis_streams"
    blocking_class, native_class = "RedisStreamsBackend", "AsyncRedisStreamsBackend"
    url = URL
    default_prefix = "bench-redis-melange"
    clients = ("redis",)
    naming = staticmethod(key_prefix)
    deleting = staticmethod(delete_keys)
