"""Publishes one traced message from a process of its own, for the cross-process tests.

Usage: ``python publish_traced.py '{"kind": ..., "options": {...}, "queue": ...}'``. Prints
the trace id and span id of the producer span as JSON on standard output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from melange.observability.tracing import Tracing
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer


def open_backend(kind: str, options: dict[str, Any]) -> Any:
    if kind == "rabbitmq":
        from melange.backends.rabbitmq import RabbitMQBackend

        return RabbitMQBackend(**options)
    if kind == "sqs":
        from melange.backends.sqs.backend import AWSBackend

        return AWSBackend(**options)
    if kind == "kafka":
        from melange.backends.kafka import KafkaBackend

        return KafkaBackend(**options)
    raise SystemExit(f"unknown backend {kind}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = open_backend(spec["kind"], spec["options"])
    try:
        tracing = Tracing.for_backend(backend, tracer_provider=provider)
        QueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish(
            spec["queue"], {"from": "another process"}
        )
    finally:
        backend.close_connection()
    (span,) = exporter.get_finished_spans()
    context = span.get_span_context()
    print(json.dumps({"trace_id": context.trace_id, "span_id": context.span_id}))


if __name__ == "__main__":
    main()
