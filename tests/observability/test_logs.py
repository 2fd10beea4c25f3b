"""JSON log lines: the dispatcher's fields, trace ids, hidden secrets."""

from __future__ import annotations

import json
import logging
import sys

from obs_support import Spans

from melange.observability.logs import JsonFormatter
from melange.redaction import redact_text


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
