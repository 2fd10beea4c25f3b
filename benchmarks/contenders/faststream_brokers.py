"""FastStream on the scale-out brokers: NATS JetStream, Redis Streams and Kafka.

Each does the work of the raw client beside it, with FastStream's defaults where the raw
contender has no setting of its own: publishing waits for the broker's acknowledgement
(JetStream's PubAck, the ``XADD`` reply, the Kafka partition leader's with ``acks=all``), a
subscriber reads 10 messages at a time and acknowledges each after its handler returned
(FastStream's ``AckPolicy.ACK``). FastStream is asynchronous: each contender runs its own
event loop, and end to end publishes from a task beside the subscriber on that loop.

The subscriber starts once, in setup, and stays running: its handler waits for the
operation that expects the messages (restarting it per operation would make Kafka rejoin
its group, which is not what is measured).
"""

from __future__ import annotations

import asyncio
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders import kafka, nats, redis_streams
from benchmarks.workload import Contender, Payload, Tally

#: Messages one read takes, as every other contender on these brokers.
BATCH = 10
#: Seconds without progress after which an operation gives up (a broken contender).
IDLE_TIMEOUT = 60.0


class FastStreamContender(Contender):
    """The shape every FastStream contender shares: a publishing broker, a subscribing
    broker with one subscriber, and a handler that feeds the current operation's tally.

    Subclasses build the brokers (:meth:`brokers`), register the subscriber
    (:meth:`subscribe`) and publish one message (:meth:`publish`).
    """

    label = "FastStream"
    #: Client libraries whose versions the report shows, besides FastStream's.
    clients: tuple[str, ...] = ()
    #: Messages sent end to end in setup, untimed (a Kafka consumer joins its group then).
    warm_up = 0

    def brokers(self) -> tuple[Any, Any]:
        """The publishing and the subscribing broker (not connected yet); names what the
        contender creates."""
        raise NotImplementedError

    def subscribe(self, broker: Any, handler: Any) -> None:
        """Register ``handler`` as the subscriber of the benchmark's queue on ``broker``."""
        raise NotImplementedError

    async def publish(self, payload: Payload) -> None:
        """Publish one message and return once the broker acknowledged it."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Declare what the subscriber does not declare itself (after connecting)."""

    def cleanup(self) -> None:
        """Delete what setup declared (leftovers of an interrupted run too)."""

    def setup(self) -> dict[str, str]:
        self.loop = asyncio.new_event_loop()
        self.pub, self.sub = self.brokers()
        self.cleanup()
        self._tally: Tally | None = None
        self._ready: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None

        async def on_message(body: dict[str, Any]) -> None:
            # Acknowledged by FastStream once this returns.
            while self._tally is None:
                assert self._ready is not None
                await self._ready.wait()
            self._tally(body)
            if self._tally.complete and self._finished is not None:
                self._finished.set()

        self.subscribe(self.sub, on_message)

        async def start() -> None:
            self._ready = asyncio.Event()
            await self.pub.connect()
            await self.prepare()
            await self.sub.start()

        self.loop.run_until_complete(start())
        if self.warm_up:
            self.op_e2e(self.warm_up)
        versions = {"faststream": version("faststream")}
        return {**versions, **{name: version(name) for name in self.clients}}

    async def _consume(self, tally: Tally) -> None:
        assert self._ready is not None
        self._finished = asyncio.Event()
        self._tally = tally
        self._ready.set()
        try:
            while not tally.complete:
                handled = tally.handled
                try:
                    await asyncio.wait_for(self._finished.wait(), IDLE_TIMEOUT)
                except TimeoutError:
                    if tally.handled == handled:
                        raise TimeoutError(f"no message for {IDLE_TIMEOUT}s") from None
        finally:
            self._tally = None
            self._ready.clear()

    def publish_one(self, payload: Payload) -> None:
        self.loop.run_until_complete(self.publish(payload))

    def consume(self, n: int, handle: Tally) -> None:
        self.loop.run_until_complete(self._consume(handle))

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        return self._op_e2e_async(self.loop, n, rate, self.publish, self._consume)

    def teardown(self) -> None:
        async def close() -> None:
            await self.sub.stop()
            await self.pub.stop()

        self.loop.run_until_complete(close())
        self.loop.close()
        self.cleanup()


class FastStreamNATS(FastStreamContender):
    """FastStream's NatsBroker: ``publish(stream=...)`` waits for the PubAck; a durable pull
    subscriber fetching 10 at a time on a work-queue stream (file storage), ``+ACK`` each."""

    clients = ("nats-py",)

    def brokers(self) -> tuple[Any, Any]:
        from faststream.nats import NatsBroker

        self.prefix = nats.stream_prefix(self.params, "bench-nats-faststream")
        self.stream, self.subject = f"{self.prefix}_work", f"{self.prefix}.work"
        return NatsBroker(nats.URL, logger=None), NatsBroker(nats.URL, logger=None)

    def subscribe(self, broker: Any, handler: Any) -> None:
        from faststream.nats import JStream, PullSub
        from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType

        stream = JStream(
            self.stream,
            subjects=[self.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
        broker.subscriber(
            self.subject,
            stream=stream,
            durable="bench",
            config=ConsumerConfig(ack_wait=30),
            pull_sub=PullSub(batch_size=BATCH, timeout=1.0),
        )(handler)

    async def publish(self, payload: Payload) -> None:
        await self.pub.publish(
            payload, self.subject, stream=self.stream, headers={"id": uuid.uuid4().hex}
        )

    def cleanup(self) -> None:
        nats.delete_streams(self.prefix)


class FastStreamRedisStreams(FastStreamContender):
    """FastStream's RedisBroker: ``publish(stream=...)`` (``XADD``); a consumer-group
    subscriber reading 10 at a time (``XREADGROUP``), ``XACK`` each (no ``XDEL``)."""

    clients = ("redis",)

    def brokers(self) -> tuple[Any, Any]:
        from faststream.redis import RedisBroker

        self.prefix = redis_streams.key_prefix(self.params, "bench-redis-faststream")
        self.stream = f"{self.prefix}stream"
        return RedisBroker(redis_streams.URL, logger=None), RedisBroker(
            redis_streams.URL, logger=None
        )

    def subscribe(self, broker: Any, handler: Any) -> None:
        from faststream.redis import StreamSub

        broker.subscriber(
            stream=StreamSub(
                self.stream,
                group="bench",
                consumer=uuid.uuid4().hex[:8],
                max_records=BATCH,
                polling_interval=1000,
            )
        )(handler)

    async def publish(self, payload: Payload) -> None:
        await self.pub.publish(payload, stream=self.stream)

    def cleanup(self) -> None:
        redis_streams.delete_keys(self.prefix)


class FastStreamKafka(kafka.FreshBroker, FastStreamContender):
    """FastStream's KafkaBroker (aiokafka): ``publish`` waits for the write (``acks=all``);
    a consumer group reading up to 10 records at a time, committing after each handler."""

    clients = ("aiokafka",)
    warm_up = kafka.WARM_UP

    def brokers(self) -> tuple[Any, Any]:
        from faststream.kafka import KafkaBroker

        self.servers = kafka.servers(self)
        self.topic = str(self.params.get("queue", "bench-kafka-faststream"))
        kafka.create_topic(self.servers, self.topic)
        # aiokafka's idempotent producer cannot start on tansu (as for Melange's asyncio row).
        pub = KafkaBroker(self.servers, acks="all", enable_idempotence=False, logger=None)
        return pub, KafkaBroker(self.servers, logger=None)

    def subscribe(self, broker: Any, handler: Any) -> None:
        from faststream import AckPolicy

        broker.subscriber(
            self.topic,
            group_id=f"bench-faststream-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            max_records=BATCH,
            session_timeout_ms=round(kafka.SESSION_SECONDS * 1000),
            ack_policy=AckPolicy.ACK,
        )(handler)

    async def publish(self, payload: Payload) -> None:
        await self.pub.publish(payload, self.topic, headers={"id": uuid.uuid4().hex})

    def teardown(self) -> None:
        super().teardown()
        kafka.stop_broker(self)
