"""What tracing and metrics cost end to end: publish N messages and consume them all, with
and without the observability middleware, on the in-memory backend and on RabbitMQ.

Variants, run in interleaved rounds (so that a slower moment of the shared machine hits them
all alike), each figure the median of the rounds:

- ``off``: no middleware (the dispatcher's fast path);
- ``api-only``: :class:`~melange.observability.tracing.Tracing` with no SDK configured (the
  OpenTelemetry API's no-op tracer), as a library user who installed ``melange[otel]`` but
  exports nothing gets;
- ``metrics``: Prometheus metrics only;
- ``sampled``: metrics, and tracing with the OpenTelemetry SDK sampling 1% of the traces
  (``ParentBased(TraceIdRatioBased(0.01))``, as busy services usually run);
- ``on``: metrics, and tracing with the OpenTelemetry SDK recording every span (a batch span
  processor; the exporter drops the spans, so exporting costs nothing here), on both the
  publisher and the dispatcher.

Usage::

    python -m benchmarks.observability [--memory N] [--rabbitmq N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.dispatch.middleware import Middleware
from melange.dispatch.threaded import MessageDispatcher
from melange.observability.metrics import PrometheusMetrics
from melange.observability.tracing import Tracing
from melange.publish_middleware import PublishMiddleware
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

VARIANTS = ("off", "api-only", "metrics", "sampled", "on")


class _Dropped(SpanExporter):
    """Takes the spans and keeps none: the cost of exporting is not Melange's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _middleware(
    variant: str, backend: MessagingBackend, providers: dict[str, TracerProvider]
) -> tuple[list[PublishMiddleware], list[Middleware]]:
    if variant == "off":
        return [], []
    if variant == "api-only":
        tracing = Tracing.for_backend(backend, tracer_provider=NoOpTracerProvider())
        return [tracing], [tracing]
    metrics = PrometheusMetrics(CollectorRegistry())
    if variant == "metrics":
        return [], [metrics]
    tracing = Tracing.for_backend(backend, tracer_provider=providers[variant])
    return [tracing], [tracing, metrics]


def _providers() -> dict[str, TracerProvider]:
    made = {
        "on": TracerProvider(),
        "sampled": TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01))),
    }
    for provider in made.values():
        provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    return made


def run_once(
    make_backend: Callable[[], MessagingBackend],
    variant: str,
    count: int,
    providers: dict[str, TracerProvider],
) -> tuple[float, float]:
    """Seconds to publish ``count`` messages and consume them all: wall clock, and CPU time
    of the process (every thread: the broker client's I/O threads too)."""
    backend = make_backend()
    name = f"bench-obs-{uuid.uuid4().hex[:8]}"
    queue, _ = backend.declare_queue(name)
    handled = 0

    def handle(payload: Any) -> None:
        nonlocal handled
        handled += 1

    publishing, dispatching = _middleware(variant, backend, providers)
    publisher = QueuePublisher(JsonSerializer(), backend, middleware=publishing)
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=handle)],
        middleware=dispatching,
    )
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        for n in range(count):
            publisher.publish(name, {"n": n, "item": "sku-1234", "quantity": 3})
        while handled < count:
            dispatcher.consume_event(name, max_messages=10, wait_seconds=1)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        dispatcher.close()
        backend.delete_queue(queue)
        backend.close_connection()


def measure(
    label: str, make_backend: Callable[[], MessagingBackend], count: int, rounds: int
) -> dict[str, Any]:
    providers = _providers()
    run_once(make_backend, "on", max(100, count // 10), providers)  # warm up
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            wall, used = run_once(make_backend, variant, count, providers)
            times[variant].append(wall)
            cpu[variant].append(used)
    for provider in providers.values():
        provider.shutdown()
    median = {variant: statistics.median(values) for variant, values in times.items()}
    median_cpu = {variant: statistics.median(values) for variant, values in cpu.items()}
    result = {
        "backend": label,
        "messages": count,
        "rounds": rounds,
        "msg_per_s": {v: round(count / median[v]) for v in VARIANTS},
        "overhead_pct": {
            v: round(100 * (median[v] / median["off"] - 1), 1) for v in VARIANTS if v != "off"
        },
        "cpu_us_per_msg": {v: round(1e6 * median_cpu[v] / count, 1) for v in VARIANTS},
        "cpu_overhead_pct": {
            v: round(100 * (median_cpu[v] / median_cpu["off"] - 1), 1)
            for v in VARIANTS
            if v != "off"
        },
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=int, default=20_000, help="messages per round, memory")
    parser.add_argument("--rabbitmq", type=int, default=2_000, help="messages per round, 0: skip")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from melange.backends.memory import InMemoryMessagingBackend

    measure("memory", InMemoryMessagingBackend, args.memory, args.rounds)
    if args.rabbitmq:
        from melange.backends.rabbitmq import RabbitMQBackend

        measure(
            "rabbitmq",
            lambda: RabbitMQBackend(host="127.0.0.1", port=5672, connection_name="bench-obs"),
            args.rabbitmq,
            args.rounds,
        )


if __name__ == "__main__":
    main()
