"""The work every contender does, and the base class that times it.

A contender implements a few primitives (publish one message, publish a batch, consume ``n``
messages) with its own client; :class:`Contender` turns them into the timed operations the
harness asks for: publish, batch publish, consume, end to end and paced latency. Handlers
check the ids they see, so a contender that loses or duplicates messages fails its round
instead of looking fast.

Standard library only: this module also runs under the released 7.2.0 interpreter.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

Payload = dict[str, Any]
Handler = Callable[[Payload], None]

#: Ids of one operation start at ``op_number * ID_STRIDE``, so a message left over from an
#: earlier operation is told apart from the current ones.
ID_STRIDE = 10_000_000


def make_payload(message_id: int) -> Payload:
    """The message every contender sends: a small order event of about 150 bytes of JSON."""
    return {
        "id": message_id,
        "kind": "order_created",
        "customer": f"c-{message_id % 9973:06d}",
        "amount": 12.5 + (message_id % 100),
        "items": [message_id % 7, message_id % 11, message_id % 13],
        "currency": "EUR",
        "t": 0.0,
    }


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) of ``values``, nearest-rank."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


class IntegrityError(RuntimeError):
    """A contender lost, duplicated or mixed up messages during an operation."""


class Tally:
    """Counts what a consumer handled and checks it against what was published."""

    def __init__(self, first_id: int, n: int, record_latency: bool) -> None:
        self.first_id = first_id
        self.n = n
        self.seen: set[int] = set()
        self.handled = 0
        self.duplicates = 0
        self.foreign = 0
        self.latencies: list[float] = []
        self._record_latency = record_latency
        self.done = threading.Event()

    def __call__(self, payload: Payload) -> None:
        if self._record_latency:
            self.latencies.append(time.monotonic() - payload["t"])
        message_id = payload["id"]
        if not self.first_id <= message_id < self.first_id + self.n:
            self.foreign += 1
        elif message_id in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(message_id)
        self.handled += 1
        if len(self.seen) >= self.n:
            self.done.set()

    @property
    def complete(self) -> bool:
        """Every published message was handled."""
        return len(self.seen) >= self.n

    def check(self, what: str) -> None:
        """Raise :class:`IntegrityError` unless exactly the published messages came back."""
        if len(self.seen) != self.n or self.foreign:
            raise IntegrityError(
                f"{what}: expected {self.n} distinct messages, got {len(self.seen)} "
                f"({self.duplicates} duplicates, {self.foreign} from elsewhere)"
            )


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kb() -> int:
    """Resident memory of this process now, in KiB (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


class _RSSSampler(threading.Thread):
    """Samples the resident memory every ``interval`` seconds and keeps the highest."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(name="bench-rss", daemon=True)
        self.peak = rss_kb()
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.peak = max(self.peak, rss_kb())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_kb())


class Stopwatch:
    """Measures a section: wall seconds, process CPU seconds, peak resident memory and, where
    counted, HTTP requests."""

    def __init__(self, requests: Callable[[], int | None]) -> None:
        self._requests = requests
        self._first_request = requests()
        self._sampler = _RSSSampler()
        self._sampler.start()
        self._cpu = cpu_seconds()
        self._start = time.perf_counter()

    def stop(self, n: int) -> dict[str, Any]:
        """The result record of a section that handled ``n`` messages."""
        seconds = time.perf_counter() - self._start
        cpu = cpu_seconds() - self._cpu
        result: dict[str, Any] = {
            "seconds": seconds,
            "n": n,
            "cpu_s": cpu,
            "peak_rss_kb": self._sampler.stop(),
        }
        last = self._requests()
        if self._first_request is not None and last is not None:
            result["requests"] = last - self._first_request
        return result


class Contender:
    """Base of every contender: primitives to implement, timed operations for the harness.

    Subclasses keep separate clients for publishing and consuming, so the end-to-end
    operation can publish from a thread while the main thread consumes.
    """

    #: Shown in reports.
    label = "?"

    def __init__(self, **params: Any) -> None:
        self.params = params
        self._op_number = 0

    # -- primitives -------------------------------------------------------------------------

    def setup(self) -> dict[str, str]:
        """Connect and declare what is needed; returns the versions of the client libraries."""
        return {}

    def publish_one(self, payload: Payload) -> None:
        """Publish one message and return once the broker has it."""
        raise NotImplementedError

    def publish_many(self, payloads: list[Payload]) -> None:
        """Publish several messages the way this contender batches (default: one by one)."""
        for payload in payloads:
            self.publish_one(payload)

    def consume(self, n: int, handle: Tally) -> None:
        """Receive, decode, hand to ``handle`` and acknowledge until ``handle.complete``."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release connections."""

    def purge(self) -> None:
        """Drop every message of the contender's queue (after a failed operation)."""

    def op_reset(self) -> dict[str, Any]:
        """Recover after a failed operation: drop what it left in the queue."""
        self.purge()
        return {"seconds": 0.0, "n": 0}

    def request_count(self) -> int | None:
        """HTTP requests sent so far, for contenders that count them (``None``: not counted)."""
        return None

    def stopwatch(self) -> Stopwatch:
        """Start timing a measured section (wall time, process CPU time, requests)."""
        return Stopwatch(self.request_count)

    # -- timed operations -------------------------------------------------------------------

    def _ids(self) -> int:
        self._op_number += 1
        return self._op_number * ID_STRIDE

    def op_publish(self, n: int) -> dict[str, Any]:
        """Publish ``n`` messages one by one, then consume them untimed."""
        first = self._ids()
        payloads = [make_payload(first + i) for i in range(n)]
        watch = self.stopwatch()
        for payload in payloads:
            self.publish_one(payload)
        result = watch.stop(n)
        self._drain(first, n, "publish")
        return result

    def op_publish_batch(self, n: int, batch: int) -> dict[str, Any]:
        """Publish ``n`` messages in batches of ``batch``, then consume them untimed."""
        first = self._ids()
        payloads = [make_payload(first + i) for i in range(n)]
        watch = self.stopwatch()
        for offset in range(0, n, batch):
            self.publish_many(payloads[offset : offset + batch])
        result = watch.stop(n)
        self._drain(first, n, "publish_batch")
        return result

    def op_consume(self, n: int) -> dict[str, Any]:
        """Publish ``n`` messages untimed, then time consuming them."""
        first = self._ids()
        self.publish_many([make_payload(first + i) for i in range(n)])
        tally = Tally(first, n, record_latency=False)
        watch = self.stopwatch()
        self.consume(n, tally)
        result = watch.stop(n)
        tally.check("consume")
        return result

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        """Publish ``n`` messages from a thread while the main thread consumes them.

        With ``rate`` (messages per second) the publisher is paced and the result holds the
        latency percentiles from publish to the start of the handler, in milliseconds.
        """
        first = self._ids()
        payloads = [make_payload(first + i) for i in range(n)]
        tally = Tally(first, n, record_latency=rate is not None)
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                begin = time.monotonic()
                for index, payload in enumerate(payloads):
                    if rate is not None:
                        # Pacing, not waiting for a result: hold each send to its slot.
                        delay = begin + index / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    payload["t"] = time.monotonic()
                    self.publish_one(payload)
            except BaseException as exc:
                failure.append(exc)
                tally.done.set()

        producer = threading.Thread(target=produce, name="bench-producer", daemon=True)
        watch = self.stopwatch()
        producer.start()
        try:
            self.consume(n, tally)
        finally:
            producer.join(timeout=120)
        result = watch.stop(n)
        if failure:
            raise RuntimeError(f"producer failed: {failure[0]!r}") from failure[0]
        tally.check("e2e")
        if rate is not None:
            result["p50_ms"] = percentile(tally.latencies, 0.50) * 1000
            result["p99_ms"] = percentile(tally.latencies, 0.99) * 1000
            result["rate"] = rate
        return result

    def _op_e2e_async(
        self,
        loop: asyncio.AbstractEventLoop,
        n: int,
        rate: float | None,
        publish: Callable[[Payload], Awaitable[None]],
        consume: Callable[[Tally], Awaitable[None]],
    ) -> dict[str, Any]:
        """:meth:`op_e2e` for an asyncio client: a producer task and the consumer on ``loop``.

        An asyncio client's connections belong to its event loop, so publishing from another
        thread is not an option; the producer shares the loop with the consumer, as in an
        asyncio service.
        """
        first = self._ids()
        payloads = [make_payload(first + i) for i in range(n)]
        tally = Tally(first, n, record_latency=rate is not None)

        async def produce() -> None:
            begin = time.monotonic()
            for index, payload in enumerate(payloads):
                if rate is not None:
                    delay = begin + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                payload["t"] = time.monotonic()
                await publish(payload)

        async def run() -> None:
            producer = asyncio.ensure_future(produce())
            try:
                await consume(tally)
            finally:
                if not producer.done():
                    await asyncio.wait([producer], timeout=120)
            await producer  # raises what the producer raised

        watch = self.stopwatch()
        loop.run_until_complete(run())
        result = watch.stop(n)
        tally.check("e2e")
        if rate is not None:
            result["p50_ms"] = percentile(tally.latencies, 0.50) * 1000
            result["p99_ms"] = percentile(tally.latencies, 0.99) * 1000
            result["rate"] = rate
        return result

    def _drain(self, first: int, n: int, what: str) -> None:
        tally = Tally(first, n, record_latency=False)
        self.consume(n, tally)
        tally.check(what)
