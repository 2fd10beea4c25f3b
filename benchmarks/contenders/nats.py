"""NATS JetStream contenders: Melange's backend and raw nats-py doing the same work.

Both publish each message to a work-queue stream on file storage and wait for JetStream's
acknowledgement (the message is stored), read through one durable pull consumer in batches of
10 and acknowledge each message after its handler ran (``+ACK``, which JetStream does not
answer). Melange adds its envelope headers and the checks of its receive (dead-letter limit,
subscription filters, lease markers). Raw nats-py runs on one event loop (:class:`RawNATS`,
against Melange's asyncio row) or, as a threaded application runs it, on a loop per thread
(:class:`RawNATSThreads`, against Melange's threaded row).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.brokers import MelangeBrokerContender
from benchmarks.workload import Contender, Payload, Tally

URL = "nats://127.0.0.1:4222"
#: Messages one pull asks for, as Melange's consume loop does.
BATCH = 10
#: Seconds without a message after which a consumer gives up (a broken contender).
IDLE_TIMEOUT = 60.0


def stream_prefix(params: dict[str, Any], default: str) -> str:
    """The prefix of a contender's streams and subjects (stream names take no dots)."""
    return str(params.get("queue", default)).replace(".", "-")


def delete_streams(prefix: str) -> None:
    """Delete the streams of a contender (leftovers of an interrupted run too)."""
    import nats

    async def run() -> None:
        nc = await nats.connect(URL)
        try:
            reply = await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)
            for name in json.loads(reply.data).get("streams") or []:
                if name.startswith(f"{prefix}_"):
                    await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
        finally:
            await nc.close()

    asyncio.run(run())


class RawNATS(Contender):
    """nats-py: ``js.publish`` per message (waits for the stored acknowledgement), pull
    ``fetch`` of 10, ``ack`` each."""

    label = "raw nats-py"

    def setup(self) -> dict[str, str]:
        import nats

        self.prefix = stream_prefix(self.params, "bench-nats-raw")
        delete_streams(self.prefix)
        self.stream, self.subject = f"{self.prefix}_work", f"{self.prefix}.work"
        self.loop = asyncio.new_event_loop()

        async def connect() -> None:
            self.nc = await nats.connect(URL)
            self.js = self.nc.jetstream()
            await self.js.add_stream(
                name=self.stream, subjects=[self.subject], retention="workqueue", storage="file"
            )
            await self.js.add_consumer(
                self.stream, durable_name="bench", ack_policy="explicit", ack_wait=30
            )
            self.sub = await self.js.pull_subscribe_bind("bench", self.stream)

        self.loop.run_until_complete(connect())
        return {"nats-py": version("nats-py")}

    def purge(self) -> None:
        self.loop.run_until_complete(self.js.purge_stream(self.stream))

    async def _publish(self, payload: Payload) -> None:
        body = json.dumps(payload).encode()
        await self.js.publish(self.subject, body, headers={"id": uuid.uuid4().hex})

    def publish_one(self, payload: Payload) -> None:
        self.loop.run_until_complete(self._publish(payload))

    async def _consume(self, handle: Tally) -> None:
        import nats.errors

        idle = 0.0
        while not handle.complete:
            try:
                batch = await self.sub.fetch(BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                idle += 1.0
                if idle >= IDLE_TIMEOUT:
                    raise TimeoutError(f"no message for {IDLE_TIMEOUT}s on {self.stream}") from None
                continue
            idle = 0.0
            for msg in batch:
                handle(json.loads(msg.data))
                await msg.ack()

    def consume(self, n: int, handle: Tally) -> None:
        self.loop.run_until_complete(self._consume(handle))

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        return self._op_e2e_async(self.loop, n, rate, self._publish, self._consume)

    def teardown(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()
        delete_streams(self.prefix)


class RawNATSThreads(RawNATS):
    """nats-py as a threaded application drives it: the publisher's thread and the
    consumer's thread each run an event loop and a connection of their own (an asyncio
    client's connection belongs to its loop), as Melange's threaded dispatcher and publisher
    do. The same calls as :class:`RawNATS`."""

    label = "raw nats-py (two threads)"

    def setup(self) -> dict[str, str]:
        import nats

        versions = super().setup()
        self.publish_loop = asyncio.new_event_loop()

        async def connect() -> None:
            self.publish_nc = await nats.connect(URL)
            self.publish_js = self.publish_nc.jetstream()

        self.publish_loop.run_until_complete(connect())
        return versions

    async def _publish_threaded(self, payload: Payload) -> None:
        body = json.dumps(payload).encode()
        await self.publish_js.publish(self.subject, body, headers={"id": uuid.uuid4().hex})

    def publish_one(self, payload: Payload) -> None:
        self.publish_loop.run_until_complete(self._publish_threaded(payload))

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        # A publisher thread beside the consuming thread (Contender's own end to end).
        return Contender.op_e2e(self, n, rate)

    def teardown(self) -> None:
        self.publish_loop.run_until_complete(self.publish_nc.close())
        self.publish_loop.close()
        super().teardown()


class MelangeNATS(MelangeBrokerContender):
    """Melange on ``NATSBackend`` (``AsyncNATSBackend`` for asyncio)."""

    module = "melange.backends.nats"
    blocking_class, native_class = "NATSBackend", "AsyncNATSBackend"
    url = URL
    default_prefix = "bench-nats-melange"
    clients = ("nats-py",)
    naming = staticmethod(stream_prefix)
    deleting = staticmethod(delete_streams)
