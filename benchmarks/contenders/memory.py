"""In-memory contenders: Melange's in-memory broker and FastStream's test broker."""

from __future__ import annotations

import asyncio
import json
import platform
import queue
import time
import uuid
from importlib.metadata import version
from typing import Any

from benchmarks.contenders.melange_common import EmbeddedContender
from benchmarks.workload import Contender, Payload, Tally, make_payload


class MelangeMemory(EmbeddedContender):
    """Melange on ``InMemoryMessagingBackend``: publisher thread, dispatcher consume loop (under
    asyncio: both on one event loop)."""

    label = "Melange in-memory"

    def make_backend(self) -> Any:
        from melange import InMemoryMessagingBackend

        return InMemoryMessagingBackend()


class FastStreamTestBroker(Contender):
    """FastStream's ``TestRabbitBroker``: each publish calls the subscriber in process.

    It has no queue between publisher and subscriber, so only end to end is measured.
    """

    label = "FastStream TestRabbitBroker"

    def setup(self) -> dict[str, str]:
        from faststream.rabbit import RabbitBroker

        self.broker = RabbitBroker(logger=None)
        self._tally: Tally | None = None

        @self.broker.subscriber("bench-memory")
        async def on_message(body: dict[str, Any]) -> None:
            assert self._tally is not None
            self._tally(body)

        self.loop = asyncio.new_event_loop()
        return {"faststream": version("faststream")}

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        from faststream.rabbit import TestRabbitBroker

        first = self._ids()
        payloads = [make_payload(first + i) for i in range(n)]
        tally = Tally(first, n, record_latency=False)
        self._tally = tally

        async def run() -> dict[str, Any]:
            async with TestRabbitBroker(self.broker) as broker:
                watch = self.stopwatch()
                for payload in payloads:
                    await broker.publish(payload, queue="bench-memory")
                return watch.stop(n)

        result = self.loop.run_until_complete(run())
        tally.check("e2e")
        return result


class PythonFloor(Contender):
    """The least an in-process broker can do in CPython: no library at all.

    A publisher thread puts ``(uuid4 hex, {"published_at": ...}, json.dumps(payload))`` on a
    ``queue.Queue``; the consumer takes each one off, ``json.loads`` it and calls the handler.
    No envelope, routing, leases, acknowledgements or failure handling: what it reaches on a
    machine bounds what any Python messaging library can reach there, so Melange's ratio to
    it is the cost of everything Melange does per message.
    """

    label = "bare Python (queue.Queue + json)"

    def setup(self) -> dict[str, str]:
        self.queue: queue.Queue[tuple[str, dict[str, str], str]] = queue.Queue()
        return {"python": platform.python_version()}

    def publish_one(self, payload: Payload) -> None:
        self.queue.put(
            (uuid.uuid4().hex, {"published_at": f"{time.time():.6f}"}, json.dumps(payload))
        )

    def consume(self, n: int, handle: Tally) -> None:
        get = self.queue.get
        while not handle.complete:
            _, _, body = get()
            handle(json.loads(body))

    def purge(self) -> None:
        self.queue = queue.Queue()
