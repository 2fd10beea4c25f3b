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


class _Counts:
    """What one thread counted. Only that thread writes it, so the hot path takes no lock
    (prometheus-client's own metrics take one per update); a scrape reads copies."""

    __slots__ = ("counters", "gauges", "histograms")

    def __init__(self) -> None:
        self.counters: dict[_Key, float] = {}
        self.gauges: dict[_Key, float] = {}
        # Per series: the count in each bucket (not cumulative), then the +Inf one, then the sum.
        self.histograms: dict[_Key, list[float]] = {}


class _Collector:
    """The metric families of one registry, summed over the threads' counts at each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._local = threading.local()
        self._all: list[_Counts] = []
        self._lock = threading.Lock()
        registry.register(self)

    def counts(self) -> _Counts:
        """The calling thread's counts."""
        try:
            found: _Counts = self._local.counts
        except AttributeError:
            found = self._local.counts = _Counts()
            with self._lock:
                self._all.append(found)
        return found

    def collect(self) -> Iterator[Metric]:
        """The families, summed over every thread (called by prometheus-client)."""
        with self._lock:
            every = list(self._all)
        counters: dict[_Key, float] = {}
        gauges: dict[_Key, float] = {}
        histograms: dict[_Key, list[float]] = {}
        for counts in every:
            # dict.copy() is atomic under the GIL: the owner may go on counting meanwhile.
            for key, value in counts.counters.copy().items():
                counters[key] = counters.get(key, 0.0) + value
            for key, value in counts.gauges.copy().items():
                gauges[key] = gauges.get(key, 0.0) + value
            for key, series in counts.histograms.copy().items():
                copied = list(series)
                total = histograms.get(key)
                histograms[key] = (
                    copied if total is None else [a + b for a, b in zip(total, copied, strict=True)]
                )
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
                for bound, count in zip((*map(float, bounds), math.inf), merged, strict=False):
                    running += count
                    buckets.append((_bound(bound), running))
                histogram.add_metric(list(values), buckets, merged[-1])
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


def _observe(counts: _Counts, key: _Key, bounds: tuple[float, ...], value: float) -> None:
    series = counts.histograms.get(key)
    if series is None:
        series = counts.histograms[key] = [0.0] * (len(bounds) + 2)
    series[bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound >= value
    series[-1] += value


def _add(counter: dict[_Key, float], key: _Key, amount: float = 1.0) -> None:
    counter[key] = counter.get(key, 0.0) + amount


class _Timer:
    """Observes the duration of one consumer call (a class: cheaper than a generator)."""

    __slots__ = ("_collector", "_key", "_started")

    def __init__(self, collector: _Collector, key: _Key) -> None:
        self._collector = collector
        self._key = key
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        _observe(self._collector.counts(), self._key, HANDLER_BUCKETS, elapsed)


class PrometheusMetrics(Middleware):
    """Counts and times what a dispatcher does, in Prometheus metrics (see the module doc).

    Several dispatchers of one process may share a registry: the metric families are made
    once per registry. Each thread counts on its own, without a lock, and a scrape adds the
    threads' counts up.

    Args:
        registry: Where the metrics are registered; prometheus-client's global registry by
            default.
        clock: Wall clock, in seconds since the epoch (compared with ``published_at``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self._collector = _collector(self.registry)
        self._clock = clock
        # id(message) -> queue, for the hooks that are not given the queue.
        self._queues: dict[int, str] = {}

    def message_received(self, message: Message, queue: str) -> None:
        self._queues[id(message)] = queue
        counts = self._collector.counts()
        _add(counts.counters, ("received", (queue,)))
        _add(counts.gauges, ("in_flight", (queue,)))

    def consumer_call(self, message: Message, consumer: Consumer) -> _Timer:
        queue = self._queues.get(id(message), "")
        return _Timer(self._collector, ("handler", (queue, consumer.name)))

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        queue = self._queues.get(id(message), "")
        counters = self._collector.counts().counters
        _add(counters, ("processed", (queue, consumer.name, outcome.value)))
        if outcome is Outcome.FAILED:
            _add(counters, ("failed", (queue, consumer.name)))

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        received = self._queues.pop(id(message), None) is not None
        action = verdict.action
        counts = self._collector.counts()
        counters = counts.counters
        _add(counters, ("settled", (queue, action.value)))
        if action is Action.RETRY:
            _add(counters, ("retried", (queue,)))
        elif action is Action.DEAD_LETTER:
            _add(counters, ("dead_lettered", (queue,)))
        if not received:
            return  # abandoned before it was handled: it was never counted in flight
        _add(counts.gauges, ("in_flight", (queue,)), -1.0)
        published = _published_at(message)
        if published is not None:
            latency = max(0.0, self._clock() - published)
            _observe(counts, ("latency", (queue, action.value)), LATENCY_BUCKETS, latency)

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        counts = self._collector.counts()
        _add(counts.counters, ("settled", (queue, "unsettled")))
        if self._queues.pop(id(message), None) is not None:
            _add(counts.gauges, ("in_flight", (queue,)), -1.0)


def _published_at(message: Message) -> float | None:
    raw = message.headers.get(PUBLISHED_AT)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None  # a foreign producer's header: no latency rather than a wrong one


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
