"""OpenTelemetry tracing: a producer span per publish, a consumer span per handled message,
the trace context carried by the headers of every backend, retries and dead letters on the
span."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from obs_support import Broker, Spans
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.threaded import MessageDispatcher
from melange.exceptions import QueueNotFoundError
from melange.observability.tracing import Tracing, messaging_system
from melange.publish_middleware import install_publish_middleware, uninstall_publish_middleware
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from service_check import require_service

NO_WAIT_RETRIES = FailurePolicy(max_attempts=2, initial_delay=0.0, jitter=0.0)


def consume_until(
    dispatcher: MessageDispatcher, queue: str, done: Callable[[], bool], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the messages did not arrive in time"
        dispatcher.consume_event(queue, wait_seconds=1)


def test_a_consumer_span_continues_the_trace_of_the_publish(broker: Broker, spans: Spans) -> None:
    backend = broker.backend
    queue = broker.queue()
    tracing = Tracing.for_backend(backend, tracer_provider=spans.provider)
    sent = QueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish(
        queue, {"order": 7}, correlation_id="order-7"
    )
    assert sent.headers["traceparent"].startswith("00-")
    inside: list[Any] = []

    def handle(payload: Any) -> None:
        inside.append(trace.get_current_span().get_span_context())

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=handle, name="orders")],
        middleware=[tracing],
    )
    try:
        consume_until(dispatcher, queue, lambda: bool(inside))
    finally:
        dispatcher.close()

    (send,) = spans.named("send ")
    (process,) = spans.named("process ")
    assert send.name == f"send {queue}"
    assert send.kind is SpanKind.PRODUCER
    assert send.attributes["messaging.system"] == messaging_system(backend)
    assert send.attributes["messaging.destination.name"] == queue
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.message.id"] == sent.message_id
    assert send.attributes["messaging.message.conversation_id"] == "order-7"

    assert process.name == f"process {queue}"
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id
    assert process.parent.span_id == send.context.span_id
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == queue
    assert process.attributes["messaging.message.conversation_id"] == "order-7"
    assert process.attributes["melange.outcome"] == "ack"
    assert process.status.status_code is StatusCode.UNSET
    # The message's span is the current one while its consumer runs.
    assert inside[0].span_id == process.context.span_id


def test_retries_and_the_dead_letter_are_recorded_on_the_spans(
    broker: Broker, spans: Spans
) -> None:
    backend = broker.backend
    queue = broker.queue()
    tracing = Tracing.for_backend(backend, tracer_provider=spans.provider)
    QueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish(queue, {"n": 1})
    calls: list[int] = []

    def fail(payload: Any) -> None:
        calls.append(1)
        raise ValueError("warehouse closed")

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=fail, name="stock")],
        middleware=[tracing],
        failure_policy=NO_WAIT_RETRIES,
    )
    try:
        consume_until(dispatcher, queue, lambda: dispatcher.stats.as_dict()["dead_lettered"] > 0)
    finally:
        dispatcher.close()

    assert len(calls) == 2
    (send,) = spans.named("send ")
    first, second = spans.named("process ")
    for span in (first, second):
        assert span.context.trace_id == send.context.trace_id
        assert span.parent.span_id == send.context.span_id  # a retry keeps the trace context
        assert span.status.status_code is StatusCode.ERROR
        assert any(e.name == "exception" for e in span.events)
    retry = next(e for e in first.events if e.name == "melange.retry")
    assert retry.attributes["melange.consumer"] == "stock"
    assert "warehouse closed" in retry.attributes["melange.reason"]
    assert first.attributes["melange.outcome"] == "retry"
    dead = next(e for e in second.events if e.name == "melange.dead_letter")
    assert dead.attributes["melange.exception"] == "builtins.ValueError"
    assert second.attributes["melange.outcome"] == "dead_letter"


def test_what_a_consumer_publishes_joins_its_trace(spans: Spans) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    backend.declare_queue("invoices")
    tracing = Tracing("melange_memory", tracer_provider=spans.provider)
    publisher = QueuePublisher(JsonSerializer(), backend, middleware=[tracing])
    publisher.publish("orders", {"order": 1})
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=lambda p: publisher.publish("invoices", p))],
        middleware=[tracing],
    )
    dispatcher.consume_event("orders")
    dispatcher.consume_event("invoices")
    first_send = next(s for s in spans.named("send orders"))
    process = next(s for s in spans.named("process orders"))
    second_send = next(s for s in spans.named("send invoices"))
    assert second_send.parent.span_id == process.context.span_id
    assert second_send.context.trace_id == first_send.context.trace_id
    assert next(s for s in spans.named("process invoices")).parent.span_id == (
        second_send.context.span_id
    )


def test_a_refused_publish_is_an_error_span(spans: Spans) -> None:
    backend = InMemoryMessagingBackend()
    tracing = Tracing("melange_memory", tracer_provider=spans.provider)
    with pytest.raises(QueueNotFoundError):
        QueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish("nowhere", 1)
    (send,) = spans.named("send ")
    assert send.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in send.events)


def test_each_message_of_a_batch_has_its_own_span(spans: Spans) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("batch")
    tracing = Tracing("melange_memory", tracer_provider=spans.provider)
    sent = QueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish_batch(
        "batch", [1, 2, 3]
    )
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=lambda p: None)],
        middleware=[tracing],
    )  # fmt: skip
    dispatcher.consume_event("batch", max_messages=10)
    sends = {s.attributes["messaging.message.id"]: s for s in spans.named("send ")}
    assert set(sends) == {m.message_id for m in sent}
    processes = spans.named("process ")
    assert len(processes) == 3
    for span in processes:
        assert span.parent.span_id == sends[span.attributes["messaging.message.id"]].context.span_id


@pytest.mark.parametrize("broker", ["memory", "rabbitmq", "kafka"], indirect=True)
def test_the_asyncio_publisher_and_dispatcher_trace_the_same_way(
    broker: Broker, spans: Spans
) -> None:
    backend = broker.backend
    queue = broker.queue()
    tracing = Tracing.for_backend(backend, tracer_provider=spans.provider)
    inside: list[Any] = []

    async def handle(payload: Any) -> None:
        inside.append(trace.get_current_span().get_span_context())

    async def run() -> None:
        await AsyncQueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish(
            queue, {"n": 1}
        )
        dispatcher = AsyncMessageDispatcher(
            JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handle)],
            middleware=[tracing],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not inside:
                assert time.monotonic() < deadline
                await dispatcher.consume_event(queue, wait_seconds=1)
        finally:
            dispatcher.close()

    asyncio.run(run())
    (send,) = spans.named("send ")
    (process,) = spans.named("process ")
    assert process.parent.span_id == send.context.span_id
    assert inside[0].span_id == process.context.span_id


@pytest.mark.parametrize("broker", ["rabbitmq", "sqs", "kafka"], indirect=True)
def test_the_trace_goes_on_in_another_process(
    broker: Broker, spans: Spans, request: pytest.FixtureRequest
) -> None:
    queue = broker.queue()
    if broker.kind == "rabbitmq":
        host, port = require_service("rabbitmq")
        options: dict[str, Any] = {"host": host, "port": port}
    elif broker.kind == "kafka":
        # The settings of the fixture's backend, on the session's tansu broker.
        options = {
            **request.getfixturevalue("kafka_options"),
            "url": request.getfixturevalue("kafka_url"),
        }
    else:
        options = {**request.getfixturevalue("sqs_endpoint").options(), "wait_time_seconds": 1}
    spec = {"kind": broker.kind, "options": options, "queue": queue}
    published = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("publish_traced.py")), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    producer = json.loads(published.stdout)
    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=broker.backend,
        consumers=[Consumer(on_message=handled.append)],
        middleware=[Tracing.for_backend(broker.backend, tracer_provider=spans.provider)],
    )
    try:
        consume_until(dispatcher, queue, lambda: bool(handled))
    finally:
        dispatcher.close()
    assert handled == [{"from": "another process"}]
    (process,) = spans.named("process ")
    assert process.context.trace_id == producer["trace_id"]
    assert process.parent.span_id == producer["span_id"]
    assert process.parent.is_remote


def test_an_installed_tracing_covers_every_publisher(spans: Spans) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("anywhere")
    made_before = QueuePublisher(JsonSerializer(), backend)
    tracing = Tracing("melange_memory", tracer_provider=spans.provider)
    install_publish_middleware(tracing)
    try:
        sent = made_before.publish("anywhere", 1)
        assert "traceparent" in sent.headers
    finally:
        uninstall_publish_middleware(tracing)
    assert "traceparent" not in made_before.publish("anywhere", 2).headers
    assert len(spans.named("send anywhere")) == 1


def test_without_an_sdk_tracing_does_nothing() -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("quiet")
    tracing = Tracing("melange_memory", tracer_provider=NoOpTracerProvider())
    sent = QueuePublisher(JsonSerializer(), backend, middleware=[tracing]).publish("quiet", 1)
    assert "traceparent" not in sent.headers
    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handled.append)],
        middleware=[tracing],
    )  # fmt: skip
    dispatcher.consume_event("quiet")
    assert handled == [1]


def test_a_trace_sampled_out_stays_sampled_out_downstream(spans: Spans) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    backend = InMemoryMessagingBackend()
    backend.declare_queue("first")
    backend.declare_queue("second")
    # The producer samples nothing; the consumer's provider keeps what its parent kept
    # (the SDK's default sampler) and would record a trace of its own.
    producer = Tracing("melange_memory", tracer_provider=TracerProvider(sampler=ALWAYS_OFF))
    consumer = Tracing("melange_memory", tracer_provider=spans.provider)
    sent = QueuePublisher(JsonSerializer(), backend, middleware=[producer]).publish("first", 1)
    trace_id = sent.headers["traceparent"].split("-")[1]
    onward = QueuePublisher(JsonSerializer(), backend, middleware=[consumer])
    forwarded: list[dict[str, str]] = []

    def forward(payload: Any) -> None:
        forwarded.append(dict(onward.publish("second", payload).headers))

    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=forward)],
        middleware=[consumer],
    )  # fmt: skip
    dispatcher.consume_event("first")
    (headers,) = forwarded
    _, forwarded_trace, _, flags = headers["traceparent"].split("-")
    assert forwarded_trace == trace_id  # the same trace goes on...
    assert int(flags, 16) & 0x01 == 0  # ...still marked as not sampled
    assert spans.finished() == []  # and nothing downstream recorded it


def test_an_sdk_set_up_after_the_tracing_is_used_from_then_on() -> None:
    script = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.threaded import MessageDispatcher
from melange.observability.tracing import Tracing
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

backend = InMemoryMessagingBackend()
backend.declare_queue("q")
tracing = Tracing("melange_memory")
publisher = QueuePublisher(JsonSerializer(), backend, middleware=[tracing])
handled = []
dispatcher = MessageDispatcher(
    JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handled.append)],
    middleware=[tracing],
)
before = "traceparent" in publisher.publish("q", 1).headers
dispatcher.consume_event("q")
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
after = "traceparent" in publisher.publish("q", 2).headers
dispatcher.consume_event("q")
names = [span.name for span in exporter.get_finished_spans()]
print(json.dumps({"before": before, "after": after, "spans": names, "handled": handled}))
"""
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(ran.stdout) == {
        "before": False,
        "after": True,
        "spans": ["send q", "process q"],
        "handled": [1, 2],
    }
