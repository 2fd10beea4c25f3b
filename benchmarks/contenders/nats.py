"""NATS JetStream contenders: Melange's backend and raw nats-py doing the same work.

Both publish each message to a work-queue stream on file storage and wait for JetStream's
acknowledgement (the message is stored), read through one durable pull consumer in batches of
10 and acknowledge each message after its handler ran (``+ACK``, which JetStream does not
answer). Melange adds its envelope headers, the checks of its receive (dead-letter limit,
subscription filters) and, for the threaded dispatcher, the hand-over of every call to the
event loop its nats-py client runs on.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.melange_common import MelangeContender
from benchmarks.workload import Contender, Payload, Tally

URL = "nats://127.0.0.1:4222"
#: Messages one pull asks for, as Melange's consume loop does.
BATCH = 10
#: Seconds without a message after which a consumer gives up (a broken contender).
IDLE_TIMEOUT = 60.0


def _prefix(params: dict[str, Any], default: str) -> str:
    # Stream names take no dots.
    return str(params.get("queue", default)).replace(".", "-")


def _delete_streams(prefix: str) -> None:
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

        self.prefix = _prefix(self.params, "bench-nats-raw")
        _delete_streams(self.prefix)
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
        _delete_streams(self.prefix)


class MelangeNATS(MelangeContender):
    """Melange on ``NATSBackend`` (``AsyncNATSBackend`` for asyncio)."""

    label = "Melange"

    def make_backend(self) -> Any:
        from melange.backends.nats import NATSBackend

        return NATSBackend(URL, prefix=self.prefix)

    def make_async_backend(self) -> Any:
        from melange.backends.nats import AsyncNATSBackend

        return AsyncNATSBackend(URL, prefix=self.prefix)

    def setup(self) -> dict[str, str]:
        self.prefix = _prefix(self.params, "bench-nats-melange")
        _delete_streams(self.prefix)
        self.params.setdefault("queue", "work")
        versions = super().setup()
        return {**versions, "nats-py": version("nats-py")}

    def purge(self) -> None:
        backend = self.pub_backend
        if self.native:
            assert self.loop is not None
            self.loop.run_until_complete(backend.purge(self.queue_name))
        else:
            backend.purge(self.queue_name)

    def teardown(self) -> None:
        super().teardown()
        _delete_streams(self.prefix)
