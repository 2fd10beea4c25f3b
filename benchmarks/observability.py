"""What tracing and metrics cost end to end: publish N messages and consume them all, with
and without the observability middleware, on the in-memory backend and on RabbitMQ.

Variants, run in interleaved rounds (so that a slower moment of the shared machine hits them
all alike; each round starts with another variant), each figure the median of the rounds, and
each overhead the median of the rounds' ratios to ``off``:

- ``off``: no middleware (the dispatcher's fast path);
- ``empty``: a middleware whose every hook does nothing (what calling the hooks costs the
  dispatcher, the floor under any middleware; not run unless named in ``--variants``);
- ``api-only``: :class:`~melange.observability.tracing.Tracing` with no SDK configured (the
  global tracer provider left unset: the OpenTelemetry API's proxy), as a library user who
  installed ``melange[otel]`` but exports nothing gets;
- ``metrics``: Prometheus metrics only;
- ``sampled``: metrics, and tracing with the OpenTelemetry SDK sampling 1% of the traces
  (``ParentBased(TraceIdRatioBased(0.01))``, as busy services usually run);
- ``on``: metrics, and tracing with the OpenTelemetry SDK recording every span (a batch span
  processor; the exporter drops the spans, so exporting costs nothing here), on both the
  publisher and the dispatcher.

Usage::

    python -m benchmarks.observability [--memory N] [--rabbitmq N] [--rounds R] [--hooks]
        [--variants off,empty,metrics]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.dispatch.middleware import Middleware
from melange.dispatch.threaded import MessageDispatcher
from melange.observability.metrics import PrometheusMetrics
from melange.observability.tracing import Tracing, messaging_system
from melange.publish_middleware import PublishMiddleware
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

VARIANTS = ("off", "api-only", "metrics", "sampled", "on")
#: Variants that run only when asked for.
EXTRA_VARIANTS = ("empty",)


class _Empty(Middleware):
    """Every hook overridden to do nothing: the dispatcher calls them all."""

    def message_received(self, message: Any, queue: str) -> None:
        pass

    def consumer_call(self, message: Any, consumer: Any) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def consumer_finished(self, message: Any, consumer: Any, outcome: Any, error: Any) -> None:
        pass

    def message_settled(self, message: Any, queue: str, verdict: Any) -> None:
        pass


class _TimedTracing(Tracing):
    """Tracing that adds up the CPU time of the thread spent in its hooks (with ``--hooks``:
    what the tracing itself costs, apart from the broker's varying share)."""

    spent = 0.0

    def publishing(self, message: Any, destination: str, kind: Any) -> Any:
        started = time.thread_time()
        try:
            return super().publishing(message, destination, kind)
        finally:
            _TimedTracing.spent += time.thread_time() - started

    def message_received(self, message: Any, queue: str) -> None:
        started = time.thread_time()
        try:
            super().message_received(message, queue)
        finally:
            _TimedTracing.spent += time.thread_time() - started

    def consumer_finished(self, message: Any, consumer: Any, outcome: Any, error: Any) -> None:
        started = time.thread_time()
        try:
            super().consumer_finished(message, consumer, outcome, error)
        finally:
            _TimedTracing.spent += time.thread_time() - started

    def message_settled(self, message: Any, queue: str, verdict: Any) -> None:
        started = time.thread_time()
        try:
            super().message_settled(message, queue, verdict)
        finally:
            _TimedTracing.spent += time.thread_time() - started


class _Dropped(SpanExporter):
    """Takes the spans and keeps none: the cost of exporting is not Melange's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _middleware(
    variant: str, backend: MessagingBackend, providers: dict[str, TracerProvider]
) -> tuple[list[PublishMiddleware], list[Middleware]]:
    if variant == "off":
        return [], []
    if variant == "empty":
        return [], [_Empty()]
    if variant == "api-only":
        # The global provider, never set in this process: the API's proxy.
        tracing = Tracing.for_backend(backend)
        return [tracing], [tracing]
    metrics = PrometheusMetrics(CollectorRegistry())
    if variant == "metrics":
        return [], [metrics]
    if variant == "hooks":
        tracing = _TimedTracing(messaging_system(backend), tracer_provider=providers["sampled"])
    else:
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
) -> tuple[float, float, float]:
    """Seconds to publish ``count`` messages and consume them all: wall clock, CPU time of
    the process (every thread: the broker client's I/O threads and the span processor's
    too), and CPU time of the thread that publishes and consumes (where the middleware runs;
    it leaves out threads that wake by the clock, whose CPU grows with a slow broker)."""
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
        thread = time.thread_time()
        for n in range(count):
            publisher.publish(name, {"n": n, "item": "sku-1234", "quantity": 3})
        while handled < count:
            dispatcher.consume_event(name, max_messages=10, wait_seconds=1)
        return (
            time.perf_counter() - started,
            time.process_time() - cpu,
            time.thread_time() - thread,
        )
    finally:
        dispatcher.close()
        backend.delete_queue(queue)
        backend.close_connection()


def _paired(values: dict[str, list[float]]) -> dict[str, float]:
    """Each variant's overhead over ``off``, in percent: the median over the rounds of its
    ratio to ``off`` in the same round (a slow moment of the machine hits both alike)."""
    base = values["off"]
    ratios = {
        v: statistics.median(a / b for a, b in zip(values[v], base, strict=True))
        for v in values
        if v != "off"
    }
    return {v: round(100 * (ratio - 1), 1) for v, ratio in ratios.items()}


def measure(
    label: str,
    make_backend: Callable[[], MessagingBackend],
    count: int,
    rounds: int,
    variants: Sequence[str] = VARIANTS,
) -> dict[str, Any]:
    providers = _providers()
    for variant in variants:  # warm up
        run_once(make_backend, variant, max(100, count // 10), providers)
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    cpu: dict[str, list[float]] = {variant: [] for variant in variants}
    thread: dict[str, list[float]] = {variant: [] for variant in variants}
    for turn in range(rounds):
        # Each round starts with another variant: none is always first or last.
        shift = turn % len(variants)
        for variant in (*variants[shift:], *variants[:shift]):
            wall, used, own = run_once(make_backend, variant, count, providers)
            times[variant].append(wall)
            cpu[variant].append(used)
            thread[variant].append(own)
    for provider in providers.values():
        provider.shutdown()
    median = {variant: statistics.median(values) for variant, values in times.items()}
    median_cpu = {variant: statistics.median(values) for variant, values in cpu.items()}
    median_thread = {variant: statistics.median(values) for variant, values in thread.items()}
    result = {
        "backend": label,
        "messages": count,
        "rounds": rounds,
        "msg_per_s": {v: round(count / median[v]) for v in variants},
        "overhead_pct": _paired(times),
        "cpu_us_per_msg": {v: round(1e6 * median_cpu[v] / count, 1) for v in variants},
        "cpu_overhead_pct": _paired(cpu),
        "thread_cpu_us_per_msg": {v: round(1e6 * median_thread[v] / count, 1) for v in variants},
        "thread_cpu_overhead_pct": _paired(thread),
    }
    print(json.dumps(result), flush=True)
    return result


def measure_hooks(
    label: str, make_backend: Callable[[], MessagingBackend], count: int, rounds: int
) -> dict[str, Any]:
    """CPU time spent in the tracing hooks per message (1% sampled, with metrics), the thread's
    CPU time per message beside it: the wrapper's own clock reads are counted too."""
    providers = _providers()
    run_once(make_backend, "hooks", max(100, count // 10), providers)  # warm up
    hooks, thread = [], []
    for _ in range(rounds):
        _TimedTracing.spent = 0.0
        _, _, own = run_once(make_backend, "hooks", count, providers)
        hooks.append(1e6 * _TimedTracing.spent / count)
        thread.append(1e6 * own / count)
    for provider in providers.values():
        provider.shutdown()
    result = {
        "backend": label,
        "messages": count,
        "tracing_hooks_us_per_msg": [round(value, 1) for value in hooks],
        "thread_cpu_us_per_msg": [round(value, 1) for value in thread],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--memory", type=int, default=20_000, help="messages per round, memory, 0: skip"
    )
    parser.add_argument("--rabbitmq", type=int, default=2_000, help="messages per round, 0: skip")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--hooks",
        action="store_true",
        help="measure the CPU time spent in the tracing hooks instead (1%% sampled, each round)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, off among them (known: {', '.join(VARIANTS + EXTRA_VARIANTS)})",
    )
    args = parser.parse_args()
    variants = tuple(args.variants.split(","))
    unknown = set(variants) - set(VARIANTS + EXTRA_VARIANTS)
    if unknown or "off" not in variants:
        parser.error(f"--variants: unknown {sorted(unknown)}, or no off")
    from melange.backends.memory import InMemoryMessagingBackend

    def run(label: str, make_backend: Callable[[], MessagingBackend], count: int) -> None:
        if args.hooks:
            measure_hooks(label, make_backend, count, args.rounds)
        else:
            measure(label, make_backend, count, args.rounds, variants)

    if args.memory:
        run("memory", InMemoryMessagingBackend, args.memory)
    if args.rabbitmq:
        from melange.backends.rabbitmq import RabbitMQBackend

        run(
            "rabbitmq",
            lambda: RabbitMQBackend(host="127.0.0.1", port=5672, connection_name="bench-obs"),
            args.rabbitmq,
        )


if __name__ == "__main__":
    main()
