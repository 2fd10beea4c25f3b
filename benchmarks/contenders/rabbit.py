"""RabbitMQ contenders: Melange, raw pika, kombu and FastStream, with identical guarantees.

Every contender publishes persistent messages to a durable queue with publisher confirms,
consumes with the same prefetch and acknowledges each message after its handler ran.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.melange_common import MelangeContender
from benchmarks.workload import Contender, Payload, Tally

HOST = "127.0.0.1"
PORT = 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"
#: Seconds without a delivery after which a consumer gives up (a broken contender, not a
#: slow one: every operation finishes in seconds).
IDLE_TIMEOUT = 60.0


def _queue_name(params: dict[str, Any], default: str) -> str:
    # The queue type is part of the name: RabbitMQ refuses to redeclare a queue as another type.
    return f"{params.get('queue', default)}.{_queue_type(params)}"


def _queue_type(params: dict[str, Any]) -> str:
    return str(params.get("queue_type", "quorum"))


def _queue_arguments(params: dict[str, Any]) -> dict[str, Any]:
    return {"x-queue-type": _queue_type(params)}


def _purge(queue: str) -> None:
    """Empty ``queue`` (leftovers of an interrupted run would fail the integrity checks)."""
    import pika

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(HOST, PORT, credentials=pika.PlainCredentials("guest", "guest"))
    )
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()


class RawPika(Contender):
    """pika's BlockingConnection: confirm each publish, consume with prefetch, ack each."""

    label = "raw pika"

    def setup(self) -> dict[str, str]:
        import pika

        self._pika = pika
        self.queue = _queue_name(self.params, "bench.rabbit.pika")
        self.prefetch = int(self.params.get("prefetch", 10))
        parameters = pika.ConnectionParameters(
            HOST, PORT, credentials=pika.PlainCredentials("guest", "guest"), heartbeat=600
        )
        self.pub_conn = pika.BlockingConnection(parameters)
        self.pub = self.pub_conn.channel()
        self.pub.confirm_delivery()
        self.pub.queue_declare(self.queue, durable=True, arguments=_queue_arguments(self.params))
        self.pub.queue_purge(self.queue)
        self.sub_conn = pika.BlockingConnection(parameters)
        self.sub = self.sub_conn.channel()
        self.sub.basic_qos(prefetch_count=self.prefetch)
        return {"pika": version("pika")}

    def purge(self) -> None:
        self.pub.queue_purge(self.queue)

    def publish_one(self, payload: Payload) -> None:
        # With confirms on, basic_publish blocks until the broker confirms this message;
        # mandatory, as Melange's queue publishes are, so an unroutable message raises.
        self.pub.basic_publish(
            "",
            self.queue,
            json.dumps(payload),
            self._pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=uuid.uuid4().hex
            ),
            mandatory=True,
        )

    def consume(self, n: int, handle: Tally) -> None:
        for method, _props, body in self.sub.consume(self.queue, inactivity_timeout=IDLE_TIMEOUT):
            if method is None:
                raise TimeoutError(f"no delivery for {IDLE_TIMEOUT}s on {self.queue}")
            handle(json.loads(body))
            self.sub.basic_ack(method.delivery_tag)
            if handle.complete:
                break
        self.sub.cancel()

    def teardown(self) -> None:
        self.pub_conn.close()
        self.sub_conn.close()


class Kombu(Contender):
    """kombu over py-amqp: confirmed persistent publishes, a Consumer with prefetch, ack each."""

    label = "kombu"

    def setup(self) -> dict[str, str]:
        import kombu

        self._kombu = kombu
        self.queue_name = _queue_name(self.params, "bench.rabbit.kombu")
        self.prefetch = int(self.params.get("prefetch", 10))
        self.pub_conn = kombu.Connection(URL, transport_options={"confirm_publish": True})
        self.sub_conn = kombu.Connection(URL)
        self.queue = kombu.Queue(
            self.queue_name,
            exchange=kombu.Exchange(""),
            routing_key=self.queue_name,
            durable=True,
            queue_arguments=_queue_arguments(self.params),
        )
        channel = self.pub_conn.channel()
        bound = self.queue(channel)
        bound.declare()
        bound.purge()
        self.producer = kombu.Producer(self.pub_conn.channel(), serializer="json")
        self._bound = bound
        return {"kombu": version("kombu"), "amqp": version("amqp")}

    def purge(self) -> None:
        self._bound.purge()

    def publish_one(self, payload: Payload) -> None:
        self.producer.publish(
            payload, routing_key=self.queue_name, exchange="", delivery_mode=2, mandatory=True
        )

    def consume(self, n: int, handle: Tally) -> None:
        def on_message(body: Any, message: Any) -> None:
            handle(body)
            message.ack()

        with self._kombu.Consumer(
            self.sub_conn,
            queues=[self.queue],
            callbacks=[on_message],
            accept=["json"],
            prefetch_count=self.prefetch,
        ):
            while not handle.complete:
                self.sub_conn.drain_events(timeout=IDLE_TIMEOUT)

    def teardown(self) -> None:
        self.pub_conn.release()
        self.sub_conn.release()


class FastStreamRabbit(Contender):
    """FastStream's RabbitBroker (aio-pika): persist=True with confirms, prefetch, ack each.

    FastStream is asynchronous, so this contender runs its own event loop and replaces the
    thread-based operations with coroutines doing the same work.
    """

    label = "FastStream"

    def setup(self) -> dict[str, str]:
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        self.queue_name = _queue_name(self.params, "bench.rabbit.faststream")
        self.prefetch = int(self.params.get("prefetch", 10))
        self.loop = asyncio.new_event_loop()
        self.queue = RabbitQueue(
            self.queue_name, durable=True, arguments=_queue_arguments(self.params)
        )
        self.pub = RabbitBroker(URL, default_channel=Channel(publisher_confirms=True), logger=None)
        self.sub = RabbitBroker(
            URL, default_channel=Channel(prefetch_count=self.prefetch), logger=None
        )
        self._tally: Tally | None = None
        self._finished: asyncio.Event | None = None

        @self.sub.subscriber(self.queue)
        async def on_message(body: dict[str, Any]) -> None:
            tally = self._tally
            if tally is None:
                raise RuntimeError("message outside an operation")
            tally(body)
            if tally.complete and self._finished is not None:
                self._finished.set()

        async def connect() -> None:
            await self.pub.connect()
            await self.pub.declare_queue(self.queue)
            await self.sub.connect()

        self.loop.run_until_complete(connect())
        _purge(self.queue_name)
        return {
            "faststream": version("faststream"),
            "aio-pika": version("aio-pika"),
            "aiormq": version("aiormq"),
        }

    def purge(self) -> None:
        _purge(self.queue_name)

    async def _publish(self, payload: Payload) -> None:
        await self.pub.publish(payload, queue=self.queue, persist=True)

    async def _consume(self, tally: Tally) -> None:
        self._tally = tally
        self._finished = asyncio.Event()
        if not tally.complete:
            await self.sub.start()
            try:
                await asyncio.wait_for(self._finished.wait(), IDLE_TIMEOUT)
            finally:
                await self._stop_subscribers()
        self._tally = None

    async def _stop_subscribers(self) -> None:
        for subscriber in self.sub.subscribers:
            await subscriber.stop()
        self.sub.running = False

    def publish_one(self, payload: Payload) -> None:
        self.loop.run_until_complete(self._publish(payload))

    def publish_many(self, payloads: list[Payload]) -> None:
        async def run() -> None:
            for payload in payloads:
                await self._publish(payload)

        self.loop.run_until_complete(run())

    def consume(self, n: int, handle: Tally) -> None:
        self.loop.run_until_complete(self._consume(handle))

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        return self._op_e2e_async(self.loop, n, rate, self._publish, self._consume)

    def teardown(self) -> None:
        async def close() -> None:
            await self.pub.stop()
            await self.sub.stop()

        self.loop.run_until_complete(close())


class MelangeRabbit(MelangeContender):
    """Melange on ``RabbitMQBackend``: confirmed publishes, consume loop with the same prefetch."""

    label = "Melange"

    def make_backend(self) -> Any:
        from melange.backends.rabbitmq.rabbitmq_backend import RabbitMQBackend

        return RabbitMQBackend(
            host=HOST,
            port=PORT,
            prefetch_count=int(self.params.get("prefetch", 10)),
            queue_type=_queue_type(self.params),
            publisher_confirms=True,
        )

    def make_async_backend(self) -> Any:
        from melange.backends.rabbitmq import AsyncRabbitMQBackend

        return AsyncRabbitMQBackend(
            host=HOST,
            port=PORT,
            prefetch_count=int(self.params.get("prefetch", 10)),
            queue_type=_queue_type(self.params),
            publisher_confirms=True,
        )

    def setup(self) -> dict[str, str]:
        self.params.setdefault("queue", "bench.rabbit.melange")
        self.params["queue"] = _queue_name(self.params, "bench.rabbit.melange")
        versions = super().setup()
        _purge(self.queue_name)
        # Both backends run on pika: the blocking one on BlockingConnection, the asyncio one
        # on pika's asyncio adapter (AsyncioConnection).
        return {**versions, "pika": version("pika")}

    def purge(self) -> None:
        _purge(self.queue_name)
