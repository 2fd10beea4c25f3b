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
=============================================  =====================================================

::

    metrics = PrometheusMetrics()
    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, middleware=[metrics])
    serve_metrics(ProbeServer(9100).start())  # GET /metrics
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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

from melange.consumers import Consumer
from melange.dispatch.decisions import Action, Outcome, Verdict
from melange.dispatch.middleware import Middleware
from melange.models import PUBLISHED_AT, Message
from melange.observability.http import ProbeServer

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


__all__ = ["HANDLER_BUCKETS", "LATENCY_BUCKETS", "PrometheusMetrics", "serve_metrics"]
