"""JSON log lines: the dispatcher's fields, trace ids, hidden secrets."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from obs_support import Spans

from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.threaded import MessageDispatcher
from melange.observability.logs import JsonFormatter
from melange.publishers import QueuePublisher
from melange.redaction import redact_text
from melange.serializers.json import JsonSerializer


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("melange.dispatcher", logging.WARNING, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_json_object_with_the_dispatcher_fields() -> None:
    line = JsonFormatter().format(
        record("retry\nnow", message_id="m1", queue="q", consumer="c", attempt=2, outcome="retry")
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "retry\nnow"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "melange.dispatcher"
    assert {k: entry[k] for k in ("message_id", "queue", "consumer", "attempt", "outcome")} == {
        "message_id": "m1",
        "queue": "q",
        "consumer": "c",
        "attempt": 2,
        "outcome": "retry",
    }
    assert "trace_id" not in entry


def test_the_current_span_is_named(spans: Spans) -> None:
    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        entry = json.loads(JsonFormatter().format(record("inside")))
    context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"


def test_secrets_are_hidden() -> None:
    url = "amqp://app:s3cret@broker/vhost"
    formatter = JsonFormatter(redact=lambda text: redact_text(text, url))
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        failed = record(f"lost {url}")
        failed.exc_info = sys.exc_info()
    line = formatter.format(failed)
    assert "s3cret" not in line
    assert "ConnectionError" in json.loads(line)["exception"]


def _failing_dispatcher(always_ack: bool) -> MessageDispatcher:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("jobs", dead_letter_queue_name="jobs-dlq")
    QueuePublisher(JsonSerializer(), backend).publish("jobs", {"job": 1})

    def refuse(payload: object) -> None:
        raise ValueError("no capacity")

    return MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=refuse, name="worker")],
        always_ack=always_ack,
        failure_policy=FailurePolicy(max_attempts=2, initial_delay=0.0, jitter=0.0),
    )


def test_a_failed_attempt_is_one_log_line_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="melange")
    dispatcher = _failing_dispatcher(always_ack=False)
    dispatcher.consume_event("jobs")
    dispatcher.consume_event("jobs")
    lines = [r for r in caplog.records if r.name == "melange.dispatcher"]
    assert [(r.levelname, r.outcome, r.attempt) for r in lines] == [  # type: ignore[attr-defined]
        ("WARNING", "retry", 1),
        ("ERROR", "dead_lettered", 2),
    ]
    for line in lines:
        assert line.exc_info is not None and isinstance(line.exc_info[1], ValueError)


def test_a_failure_that_decides_nothing_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="melange")
    _failing_dispatcher(always_ack=True).consume_event("jobs")
    (line,) = [r for r in caplog.records if r.name == "melange.dispatcher"]
    assert line.levelname == "ERROR"
    assert "consumer worker failed" in line.getMessage()
