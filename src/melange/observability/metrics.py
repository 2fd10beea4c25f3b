"""Prometheus metrics of a dispatcher's work (``pip install melange[prometheus]``).

:class:`PrometheusMetrics` is a dispatcher :class:`~melange.dispatch.middleware.Middleware`.
Its labels are bounded: the queue, the consumer's name and an outcome from a fixed set, never
a message id.

=============================================  =====================================================
``melange_messages_received_total``            messages received (``queue``)
``melange_messages_processed_total``           consumer outcomes (``queue``, ``consumer``,
                                               ``outcome``: succeeded, failed,
                                               skipped_duplicate, busy, not_attempted)
``melange_messages_failed_total``              consumer failures (``queue``, ``consumer``)
``melange_messages_retried_total``             messages given back for a retry (``queue``)
``melange_messages_dead_lettered_total``       messages dead-lettered (``queue``)
``melange_messages_settled_total``             settlements (``queue``, ``outcome``: ack, retry,
                                               release, abandon, dead_letter, unsettled)
``melange_handler_duration_seconds``           one call of a consumer (``queue``, ``consumer``)
``melange_end_to_end_latency_seconds``         from the publish (the ``published_at`` header) to
                                               the settlement (``queue``, ``outcome``)
``melange_messages_in_flight``                 messages received and not settled yet (``queue``)
``melange_queue_messages``                     messages in the queue, read from the broker at
                                               each scrape (``queue``, ``state``; see
                                               :class:`QueueDepth`)
``melange_dead_letter_queue_messages``         messages in the dead-letter queue (``queue``)
=============================================  =====================================================

::

    metrics = PrometheusMetrics()
    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, middleware=[metrics])
    serve_metrics(ProbeServer(9100).start())  # GET /metrics
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from melange.backends.inspection import Inspectable, KnowsDeadLetterSources
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.dispatch.decisions import Action, Outcome, Verdict
from melange.dispatch.middleware import Middleware
from melange.models import PUBLISHED_AT, Message
from melange.observability.http import ProbeServer

logger = logging.getLogger("melange.observability")

#: Buckets of the handler duration, in seconds.
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Buckets of the end-to-end latency, in seconds (retries make it long).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip


# The families: (name, help, label names); the counters' exposed names end in ``_total``.
_COUNTERS = {
    "received": ("melange_messages_received", "Messages received.", ("queue",)),
    "processed": (
        "melange_messages_processed",
        "Consumer outcomes of handled messages.",
        ("queue", "consumer", "outcome"),
    ),
    "failed": ("melange_messages_failed", "Consumer failures.", ("queue", "consumer")),
    "retried": ("melange_messages_retried", "Messages given back for a retry.", ("queue",)),
    "dead_lettered": ("melange_messages_dead_lettered", "Messages dead-lettered.", ("queue",)),
    "settled": (
        "melange_messages_settled",
        "Settlements, by how the message was settled.",
        ("queue", "outcome"),
    ),
}
_HISTOGRAMS = {
    "handler": (
        "melange_handler_duration_seconds",
        "Duration of one call of a consumer.",
        ("queue", "consumer"),
        HANDLER_BUCKETS,
    ),
    "latency": (
        "melange_end_to_end_latency_seconds",
        "From the publish to the settlement of a message.",
        ("queue", "outcome"),
        LATENCY_BUCKETS,
    ),
}
_IN_FLIGHT = ("melange_messages_in_flight", "Messages received and not settled yet.", ("queue",))

#: A series: its family's short name and its label values.
_Key = tuple[str, tuple[str, ...]]

_ACK = Action.ACK
_RETRY = Action.RETRY
_DEAD_LETTER = Action.DEAD_LETTER
_SUCCEEDED = Outcome.SUCCEEDED
_FAILED = Outcome.FAILED


class _ConsumerCells:
    """What one thread counted for one consumer on one queue: plain ints and lists, written
    only by that thread (no lock, no prometheus-client call per message)."""

    __slots__ = ("failed", "handler", "outcomes", "succeeded", "timer")

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        #: The other outcomes, by their label value.
        self.outcomes: dict[str, int] = {}
        #: The count in each bucket (not cumulative), then the +Inf one, then the sum.
        self.handler: list[float] = [0] * (len(HANDLER_BUCKETS) + 1) + [0.0]
        #: The timer of this consumer's calls on this thread (see :class:`_Timer`).
        self.timer = _Timer(self)


class _QueueCells:
    """What one thread counted for one queue. The hot path (a message received, acknowledged
    and timed) touches a few attributes; the rarer settlements go to dictionaries. The
    in-flight gauge is not kept: a scrape works it out as received minus settled."""

    __slots__ = (
        "acked",
        "acked_latency",
        "consumers",
        "dead_lettered",
        "done",
        "latency",
        "received",
        "retried",
        "settled",
        "unsettled",
    )

    def __init__(self) -> None:
        self.received = 0
        #: Acknowledged after being received (the common case).
        self.acked = 0
        #: Received and then settled otherwise, or whose settlement failed.
        self.done = 0
        #: Every other settlement, by its label value (an ack not seen received included).
        self.settled: dict[str, int] = {}
        self.unsettled = 0
        self.retried = 0
        self.dead_lettered = 0
        self.acked_latency: list[float] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        #: The other outcomes' latencies, by their label value.
        self.latency: dict[str, list[float]] = {}
        self.consumers: dict[str, _ConsumerCells] = {}

    def consumer(self, name: str) -> _ConsumerCells:
        found = self.consumers.get(name)
        if found is None:
            found = self.consumers[name] = _ConsumerCells()
        return found


def _observe(series: list[float], bounds: tuple[float, ...], value: float) -> None:
    series[bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound >= value
    series[-1] += value


def _merge(into: dict[_Key, list[float]], key: _Key, series: list[float]) -> None:
    if series[-1] == 0.0 and not any(series[:-1]):
        return  # nothing observed yet: no series
    total = into.get(key)
    if total is None:
        into[key] = list(series)
    else:
        into[key] = [a + b for a, b in zip(total, series, strict=True)]


class _Collector:
    """The metric families of one registry, summed over the threads' counts at each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        #: Each thread's cells, by queue, as ``queues``: read straight from it on the hot
        #: path (a method call costs more), through :meth:`cells` the first time.
        self.local = threading.local()
        self._all: list[dict[str, _QueueCells]] = []
        self._lock = threading.Lock()
        registry.register(self)

    def cells(self, queue: str) -> _QueueCells:
        """The calling thread's cells for ``queue``."""
        try:
            queues: dict[str, _QueueCells] = self.local.queues
        except AttributeError:
            queues = self.local.queues = {}
            with self._lock:
                self._all.append(queues)
        found = queues.get(queue)
        if found is None:
            found = queues[queue] = _QueueCells()
        return found

    def collect(self) -> Iterator[Metric]:
        """The families, summed over every thread (called by prometheus-client)."""
        with self._lock:
            every = list(self._all)
        counters: dict[_Key, float] = {}
        gauges: dict[_Key, float] = {}
        histograms: dict[_Key, list[float]] = {}

        def add(key: _Key, amount: float) -> None:
            if amount:  # a series appears once something was counted in it
                counters[key] = counters.get(key, 0.0) + amount

        for queues in every:
            # dict.copy() is atomic under the GIL: the owner may go on counting meanwhile.
            for queue, cells in queues.copy().items():
                q = (queue,)
                received, acked, done = cells.received, cells.acked, cells.done
                add(("received", q), received)
                add(("settled", (queue, "ack")), acked)
                for action, count in cells.settled.copy().items():
                    add(("settled", (queue, action)), count)
                add(("settled", (queue, "unsettled")), cells.unsettled)
                add(("retried", q), cells.retried)
                add(("dead_lettered", q), cells.dead_lettered)
                if received or acked or done:
                    key = ("in_flight", q)
                    gauges[key] = gauges.get(key, 0.0) + received - acked - done
                _merge(histograms, ("latency", (queue, "ack")), cells.acked_latency)
                for action, series in cells.latency.copy().items():
                    _merge(histograms, ("latency", (queue, action)), series)
                for name, consumer in cells.consumers.copy().items():
                    add(("processed", (queue, name, "succeeded")), consumer.succeeded)
                    for outcome, count in consumer.outcomes.copy().items():
                        add(("processed", (queue, name, outcome)), count)
                    add(("failed", (queue, name)), consumer.failed)
                    _merge(histograms, ("handler", (queue, name)), consumer.handler)
        for short, (name, help_text, labels) in _COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=labels)
            for (kind, values), value in sorted(counters.items()):
                if kind == short:
                    family.add_metric(list(values), value)
            yield family
        name, help_text, labels = _IN_FLIGHT
        gauge = GaugeMetricFamily(name, help_text, labels=labels)
        for (_, values), value in sorted(gauges.items()):
            gauge.add_metric(list(values), value)
        yield gauge
        for short, (name, help_text, labels, bounds) in _HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, help_text, labels=labels)
            for (kind, values), merged in sorted(histograms.items()):
                if kind != short:
                    continue
                buckets, running = [], 0.0
                for bound, observed in zip((*map(float, bounds), math.inf), merged, strict=False):
                    running += observed
                    buckets.append((_bound(bound), running))
                histogram.add_metric(list(values), buckets, float(merged[-1]))
            yield histogram


def _bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


_collectors: dict[int, tuple[CollectorRegistry, _Collector]] = {}
_collectors_lock = threading.Lock()


def _collector(registry: CollectorRegistry) -> _Collector:
    with _collectors_lock:
        found = _collectors.get(id(registry))
        if found is None or found[0] is not registry:
            found = _collectors[id(registry)] = (registry, _Collector(registry))
        return found[1]


class _Timer:
    """Observes the duration of one consumer call into the calling thread's cells (a class:
    cheaper than a generator). Each consumer's cells keep one for reuse: no object is made
    per call, unless calls overlap on one thread (asyncio handlers of one consumer awaited
    together, or a consumer that dispatches to itself), when each further one gets its own."""

    __slots__ = ("_cells", "_started", "busy")

    def __init__(self, cells: _ConsumerCells, started: float = 0.0) -> None:
        self._cells = cells
        self._started = started
        #: Whether it times a call now (a reused one is started by :meth:`start`).
        self.busy = started != 0.0

    def start(self) -> _Timer:
        self.busy = True
        self._started = time.perf_counter()
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        self.busy = False
        series = self._cells.handler
        series[bisect.bisect_left(HANDLER_BUCKETS, elapsed)] += 1
        series[-1] += elapsed


class PrometheusMetrics(Middleware):
    """Counts and times what a dispatcher does, in Prometheus metrics (see the module doc).

    Several dispatchers of one process may share a registry: the metric families are made
    once per registry. Each thread counts on its own, in plain ints and lists without a lock
    or a prometheus-client call, and a scrape adds the threads' counts up into the series.

    Args:
        registry: Where the metrics are registered; prometheus-client's global registry by
            default.
        clock: Wall clock, in seconds since the epoch (compared with ``published_at``).
        max_tracked: Messages received and not settled yet that are remembered, at most;
            past that the oldest is forgotten and no longer counted in flight (a message is
            settled soon after it is received, so only one never settled is forgotten).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_tracked: int = 10_000,
    ) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, not {max_tracked}")
        self.registry = registry if registry is not None else REGISTRY
        self._collector = _collector(self.registry)
        self._local = self._collector.local
        self._clock = clock
        # id(message) -> (message, the queue it was received from), for the hooks not given
        # the queue. The message is held so that its id is not reused meanwhile: a message
        # never settled would otherwise hand its entry to a later message with its id.
        self._queues: dict[int, tuple[Message, str]] = {}
        self._max_tracked = max_tracked
        self._forget_lock = threading.Lock()

    def message_received(self, message: Message, queue: str) -> None:
        try:
            cells = self._local.queues[queue]
        except (AttributeError, KeyError):
            cells = self._collector.cells(queue)
        cells.received += 1
        tracked = self._queues
        tracked[id(message)] = (message, queue)
        if len(tracked) > self._max_tracked:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Drop the oldest entries past ``max_tracked``: messages received long ago and never
        settled (a handler that never returned, a thread that died), which would otherwise
        be held for the life of the process and counted in flight for ever."""
        forgotten: list[tuple[Message, str]] = []
        with self._forget_lock:
            tracked = self._queues
            while len(tracked) > self._max_tracked:
                try:
                    forgotten.append(tracked.pop(next(iter(tracked))))
                except (RuntimeError, KeyError):  # another thread changed it meanwhile
                    continue
        for message, queue in forgotten:
            self._collector.cells(queue).done += 1
            logger.warning(
                "metrics: message %s of %s was received and never settled; no longer counted "
                "in flight",
                message.message_id,
                queue,
            )

    def _consumer_cells(self, message: Message, consumer: Consumer) -> _ConsumerCells:
        entry = self._queues.get(id(message))
        queue = "" if entry is None else entry[1]
        try:
            return self._local.queues[queue].consumers[consumer.name]  # type: ignore[no-any-return]
        except (AttributeError, KeyError):
            return self._collector.cells(queue).consumer(consumer.name)

    def consumer_call(self, message: Message, consumer: Consumer) -> _Timer:
        # The clock starts here: the chain enters the context at once.
        cells = self._consumer_cells(message, consumer)
        timer = cells.timer
        if timer.busy:
            return _Timer(cells, time.perf_counter())  # overlapping calls: one timer each
        return timer.start()

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        cells = self._consumer_cells(message, consumer)
        if outcome is _SUCCEEDED:
            cells.succeeded += 1
            return
        outcomes = cells.outcomes
        outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
        if outcome is _FAILED:
            cells.failed += 1

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        received = self._queues.pop(id(message), None)
        try:
            cells = self._local.queues[queue]
        except (AttributeError, KeyError):
            cells = self._collector.cells(queue)
        action = verdict.action
        if received is not None and action is _ACK:
            cells.acked += 1
            series = cells.acked_latency
        else:
            self._settled_otherwise(cells, action, received is not None)
            if received is None:
                return  # abandoned before it was handled: it was never counted in flight
            series = cells.latency.get(action.value) or cells.latency.setdefault(
                action.value, [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
            )
        raw = message.headers.get(PUBLISHED_AT)
        if raw is None:
            return
        try:
            published = float(raw)
        except ValueError:
            return  # a foreign producer's header: no latency rather than a wrong one
        latency = self._clock() - published
        if latency < 0.0:
            latency = 0.0  # the publisher's clock is ahead of ours
        series[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        series[-1] += latency

    @staticmethod
    def _settled_otherwise(cells: _QueueCells, action: Action, received: bool) -> None:
        settled = cells.settled
        settled[action.value] = settled.get(action.value, 0) + 1
        if action is _RETRY:
            cells.retried += 1
        elif action is _DEAD_LETTER:
            cells.dead_lettered += 1
        if received:
            cells.done += 1

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        cells = self._collector.cells(queue)
        cells.unsettled += 1
        if self._queues.pop(id(message), None) is not None:
            cells.done += 1


def serve_metrics(server: ProbeServer, registry: CollectorRegistry | None = None) -> None:
    """Serve ``registry`` (the global one by default) at ``/metrics`` on ``server``."""
    chosen = registry if registry is not None else REGISTRY
    server.add("/metrics", lambda: (200, CONTENT_TYPE_LATEST, generate_latest(chosen)))


class QueueDepth:
    """Queue depths read from the broker at each scrape, where the backend can tell.

    A Prometheus collector: ``melange_queue_messages{queue, state}`` (``ready``,
    ``in_flight``, ``delayed`` where the backend breaks them down, and ``total``) for the
    ``queues``, and ``melange_dead_letter_queue_messages{queue}`` for the
    ``dead_letter_queues``. It reads them through the inspection contract
    (:class:`~melange.backends.inspection.Inspectable`, or a backend's ``queue_depth``); a
    backend that offers neither, or a read that fails, leaves the series out of that scrape.

    Args:
        backend: The backend (a blocking one: scrapes run on the HTTP server's thread).
        queues: The queues whose depth is exported.
        dead_letter_queues: The dead-letter queues whose depth is exported; ``None`` finds
            those of ``queues`` at the first scrape, where the backend can tell (see
            :func:`dead_letter_queues_of`).
        registry: Where to register it; ``None`` registers nowhere (register it yourself).
    """

    def __init__(
        self,
        backend: MessagingBackend,
        queues: Sequence[str] = (),
        dead_letter_queues: Sequence[str] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not isinstance(backend, MessagingBackend):
            raise TypeError(f"QueueDepth reads a blocking backend, got {type(backend).__name__}")
        self.backend = backend
        self.queues = tuple(queues)
        self._dead_letter_queues = (
            tuple(dead_letter_queues) if dead_letter_queues is not None else None
        )
        if registry is not None:
            registry.register(self)

    @property
    def dead_letter_queues(self) -> tuple[str, ...]:
        """The dead-letter queues whose depth is exported."""
        if self._dead_letter_queues is None:
            found: list[str] = []
            for queue in self.queues:
                found += dead_letter_queues_of(self.backend, queue)
            self._dead_letter_queues = tuple(dict.fromkeys(found))
        return self._dead_letter_queues

    def _counts(self, queue: str) -> dict[str, int | None] | None:
        backend = self.backend
        try:
            if isinstance(backend, Inspectable):
                stats = backend.queue_stats(queue)
                return {
                    "ready": stats.ready,
                    "in_flight": stats.in_flight,
                    "delayed": stats.delayed,
                    "total": stats.total,
                }
            depth = getattr(backend, "queue_depth", None)
            if callable(depth):
                return {"total": int(depth(queue))}
        except Exception:
            logger.debug("reading the depth of %s failed", queue, exc_info=True)
        return None

    def collect(self) -> Iterator[Metric]:
        """The gauges, read now (called by prometheus-client at each scrape)."""
        depth = GaugeMetricFamily(
            "melange_queue_messages", "Messages in the queue, by state.", labels=["queue", "state"]
        )
        for queue in self.queues:
            for state, count in (self._counts(queue) or {}).items():
                if count is not None:
                    depth.add_metric([queue, state], count)
        yield depth
        dead = GaugeMetricFamily(
            "melange_dead_letter_queue_messages",
            "Messages in the dead-letter queue.",
            labels=["queue"],
        )
        for queue in self.dead_letter_queues:
            total = (self._counts(queue) or {}).get("total")
            if total is not None:
                dead.add_metric([queue], total)
        yield dead

    def describe(self) -> Iterator[Metric]:
        """Nothing: the series are read at each scrape, never at registration."""
        return iter(())


def dead_letter_queues_of(backend: MessagingBackend, queue: str, limit: int = 200) -> list[str]:
    """The dead-letter queues ``queue`` sends its dead letters to, where the backend can tell
    (it lists its queues and knows their dead-letter sources); at most ``limit`` queues are
    looked at. Empty when it cannot tell."""
    if not isinstance(backend, Inspectable) or not isinstance(backend, KnowsDeadLetterSources):
        return []
    try:
        names = backend.queue_names()[:limit]
        return [name for name in names if queue in backend.dead_letter_sources(name)]
    except Exception:
        logger.debug("finding the dead-letter queue of %s failed", queue, exc_info=True)
        return []


__all__ = [
    "HANDLER_BUCKETS",
    "LATENCY_BUCKETS",
    "PrometheusMetrics",
    "QueueDepth",
    "dead_letter_queues_of",
    "serve_metrics",
]
