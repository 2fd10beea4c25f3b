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

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

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


class _Instruments:
    """The metric families of one registry (a family can be registered only once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "melange_messages_received", "Messages received.", ["queue"], registry=registry
        )
        self.processed = Counter(
            "melange_messages_processed",
            "Consumer outcomes of handled messages.",
            ["queue", "consumer", "outcome"],
            registry=registry,
        )
        self.failed = Counter(
            "melange_messages_failed",
            "Consumer failures.",
            ["queue", "consumer"],
            registry=registry,
        )
        self.retried = Counter(
            "melange_messages_retried", "Messages given back for a retry.", ["queue"],
            registry=registry,
        )  # fmt: skip
        self.dead_lettered = Counter(
            "melange_messages_dead_lettered", "Messages dead-lettered.", ["queue"],
            registry=registry,
        )  # fmt: skip
        self.settled = Counter(
            "melange_messages_settled",
            "Settlements, by how the message was settled.",
            ["queue", "outcome"],
            registry=registry,
        )
        self.handler = Histogram(
            "melange_handler_duration_seconds",
            "Duration of one call of a consumer.",
            ["queue", "consumer"],
            buckets=HANDLER_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "melange_end_to_end_latency_seconds",
            "From the publish to the settlement of a message.",
            ["queue", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "melange_messages_in_flight",
            "Messages received and not settled yet.",
            ["queue"],
            registry=registry,
        )


_families: dict[int, tuple[CollectorRegistry, _Instruments]] = {}
_families_lock = threading.Lock()


def _instruments(registry: CollectorRegistry) -> _Instruments:
    with _families_lock:
        found = _families.get(id(registry))
        if found is None or found[0] is not registry:
            found = _families[id(registry)] = (registry, _Instruments(registry))
        return found[1]


class _Timer:
    """Observes the duration of one consumer call (a class: cheaper than a generator)."""

    __slots__ = ("_histogram", "_started")

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._histogram.observe(time.perf_counter() - self._started)


class PrometheusMetrics(Middleware):
    """Counts and times what a dispatcher does, in Prometheus metrics (see the module doc).

    Several dispatchers of one process may share a registry: the metric families are made
    once per registry.

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
        self._m = _instruments(self.registry)
        self._clock = clock
        # Labelled children, looked up once: labels() takes a lock and builds a tuple.
        self._children: dict[tuple[Any, ...], Any] = {}
        # id(message) -> queue, for the hooks that are not given the queue.
        self._queues: dict[int, str] = {}

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def message_received(self, message: Message, queue: str) -> None:
        self._queues[id(message)] = queue
        self._child(self._m.received, queue).inc()
        self._child(self._m.in_flight, queue).inc()

    def consumer_call(self, message: Message, consumer: Consumer) -> _Timer:
        queue = self._queues.get(id(message), "")
        return _Timer(self._child(self._m.handler, queue, consumer.name))

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        queue = self._queues.get(id(message), "")
        self._child(self._m.processed, queue, consumer.name, outcome.value).inc()
        if outcome is Outcome.FAILED:
            self._child(self._m.failed, queue, consumer.name).inc()

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        received = self._queues.pop(id(message), None) is not None
        action = verdict.action
        self._child(self._m.settled, queue, action.value).inc()
        if action is Action.RETRY:
            self._child(self._m.retried, queue).inc()
        elif action is Action.DEAD_LETTER:
            self._child(self._m.dead_lettered, queue).inc()
        if not received:
            return  # abandoned before it was handled: it was never counted in flight
        self._child(self._m.in_flight, queue).dec()
        published = _published_at(message)
        if published is not None:
            latency = max(0.0, self._clock() - published)
            self._child(self._m.latency, queue, action.value).observe(latency)

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        self._child(self._m.settled, queue, "unsettled").inc()
        if self._queues.pop(id(message), None) is not None:
            self._child(self._m.in_flight, queue).dec()


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
