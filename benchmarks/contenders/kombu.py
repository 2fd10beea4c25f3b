"""Kombu contenders: Melange's kombu backend and raw kombu doing the same work, on kombu's
Redis transport and on its AMQP transport (RabbitMQ).

Both publish persistent messages one at a time through a ``Producer`` to a durable queue (on
AMQP with publisher confirms, kombu's ``confirm_publish``, so a publish returns once the broker
has the message) and acknowledge each message after its handler ran. Raw kombu consumes the
way a kombu user writes it: a ``Consumer`` with a prefetch count of 10 and
``connection.drain_events``. On Redis, both keep kombu's visibility timeout and key prefix.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from benchmarks.contenders.brokers import MelangeBrokerContender
from benchmarks.workload import Contender, Payload, Tally

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: Messages a consumer may hold unacknowledged (what Melange's dispatcher asks for at a time).
PREFETCH = 10
#: Seconds without a message after which a consumer gives up (a broken contender).
IDLE_TIMEOUT = 60.0
#: kombu's Redis visibility timeout, the same on both sides (Melange's default).
VISIBILITY_TIMEOUT = 30.0


def redis_prefix(params: dict[str, Any], default: str) -> str:
    """The key prefix of a contender on Redis."""
    return f"{params.get('queue', default)}:"


def delete_redis_keys(prefix: str) -> None:
    """Delete every key of a contender on Redis (an interrupted run's too)."""
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def amqp_name(params: dict[str, Any], default: str) -> str:
    """The queue of a contender on AMQP (named by its ``queue`` parameter)."""
    return str(params.get("queue", default))


def delete_amqp_queue(name: str) -> None:
    """Delete a contender's queue on RabbitMQ (an interrupted run's too)."""
    import kombu

    with kombu.Connection(AMQP_URL) as connection:
        channel = connection.channel()
        try:
            channel.queue_delete(name)
        finally:
            channel.close()


class _RawKombu(Contender):
    """kombu: ``Producer.publish`` per message (persistent), a ``Consumer`` with a prefetch
    count of 10 and ``drain_events``, ``message.ack()`` after each handler."""

    url = ""
    default_queue = ""

    def transport_options(self) -> dict[str, Any]:
        """kombu transport options of both connections."""
        return {}

    def name(self) -> str:
        """The queue's name."""
        raise NotImplementedError

    def delete(self) -> None:
        """Delete what this contender created."""
        raise NotImplementedError

    def setup(self) -> dict[str, str]:
        import kombu

        self.queue_name = self.name()
        self.delete()
        options = self.transport_options()
        self.pub = kombu.Connection(self.url, transport_options=options)
        self.sub = kombu.Connection(self.url, transport_options=options)
        self.queue = kombu.Queue(
            self.queue_name,
            exchange=kombu.Exchange(""),
            routing_key=self.queue_name,
            durable=True,
            auto_delete=False,
        )
        self.queue(self.pub.default_channel).declare()
        self.producer = kombu.Producer(self.pub.default_channel, auto_declare=False)
        self._handle: Tally | None = None
        self.consumer = kombu.Consumer(
            self.sub.default_channel,
            queues=[self.queue],
            callbacks=[self._on_message],
            accept=["json"],
            prefetch_count=PREFETCH,
            auto_declare=False,
        )
        return {"kombu": version("kombu")}

    def purge(self) -> None:
        self.queue(self.pub.default_channel).purge()

    def publish_one(self, payload: Payload) -> None:
        self.producer.publish(
            payload,
            exchange="",
            routing_key=self.queue_name,
            serializer="json",
            delivery_mode=2,
        )

    def _on_message(self, body: Any, message: Any) -> None:
        assert self._handle is not None
        self._handle(body)
        message.ack()

    def consume(self, n: int, handle: Tally) -> None:
        self._handle = handle
        self.consumer.consume()
        idle = 0.0
        try:
            while not handle.complete:
                try:
                    self.sub.drain_events(timeout=1.0)
                except TimeoutError:
                    idle += 1.0
                    if idle >= IDLE_TIMEOUT:
                        raise TimeoutError(
                            f"no message for {IDLE_TIMEOUT}s on {self.queue_name}"
                        ) from None
                    continue
                idle = 0.0
        finally:
            # Stops the deliveries (the prefetched messages go back when the channel closes).
            self.consumer.cancel()
            self._handle = None

    def teardown(self) -> None:
        self.pub.release()
        self.sub.release()
        self.delete()


class RawKombuRedis(_RawKombu):
    """Raw kombu on its Redis transport."""

    label = "raw kombu (Redis)"
    url = REDIS_URL

    def name(self) -> str:
        self.prefix = redis_prefix(self.params, "bench-kombu-redis-raw")
        return "work"

    def transport_options(self) -> dict[str, Any]:
        return {"global_keyprefix": self.prefix, "visibility_timeout": VISIBILITY_TIMEOUT}

    def delete(self) -> None:
        delete_redis_keys(self.prefix)


class RawKombuAMQP(_RawKombu):
    """Raw kombu on its AMQP transport, with publisher confirms."""

    label = "raw kombu (AMQP)"
    url = AMQP_URL

    def name(self) -> str:
        return amqp_name(self.params, "bench-kombu-amqp-raw")

    def transport_options(self) -> dict[str, Any]:
        return {"confirm_publish": True}

    def delete(self) -> None:
        delete_amqp_queue(self.queue_name)


class MelangeKombuRedis(MelangeBrokerContender):
    """Melange on ``KombuBackend`` over Redis (``AsyncKombuBackend`` for asyncio)."""

    module = "melange.backends.kombu"
    blocking_class, native_class = "KombuBackend", "AsyncKombuBackend"
    url = f"kombu+{REDIS_URL}"
    default_prefix = "bench-kombu-redis-melange"
    clients = ("kombu", "redis")
    naming = staticmethod(redis_prefix)
    deleting = staticmethod(delete_redis_keys)


class MelangeKombuAMQP(MelangeBrokerContender):
    """Melange on ``KombuBackend`` over AMQP (``AsyncKombuBackend`` for asyncio)."""

    module = "melange.backends.kombu"
    blocking_class, native_class = "KombuBackend", "AsyncKombuBackend"
    url = f"kombu+{AMQP_URL}"
    default_prefix = "bench-kombu-amqp-melange"
    clients = ("kombu", "amqp")
    naming = staticmethod(amqp_name)
    deleting = staticmethod(delete_amqp_queue)

    def setup(self) -> dict[str, str]:
        # On AMQP the backend's prefix names nothing: the queue itself carries the name.
        self.params.setdefault("queue", self.default_prefix)
        return super().setup()
