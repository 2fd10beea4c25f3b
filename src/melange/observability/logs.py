"""Log records as one JSON object per line (standard library only).

:class:`JsonFormatter` writes the time, level, logger and message of each record, the
fields the dispatcher passes with its records (``message_id``, ``queue``, ``consumer``,
``attempt``, ``outcome``, ``workers``), the exception when there is one, and the trace and
span ids when an OpenTelemetry span is current. ::

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)

``melange consume --log-format json`` sets it up.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

#: The record attributes written when a log call passed them with ``extra=``.
FIELDS = ("message_id", "queue", "consumer", "attempt", "outcome", "workers")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module doc).

    Args:
        tracebacks: Write the traceback of an exception (else its type and message only).
        redact: Applied to the message and the exception text before they are written
            (to hide the secrets of connection URLs, say).
    """

    def __init__(self, tracebacks: bool = True, redact: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self._tracebacks = tracebacks
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": text,
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None and value != "":
                entry[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["exception"] = (
                self.formatException(record.exc_info)
                if self._tracebacks
                else f"{type(error).__name__}: {error}"
            )
        _add_trace(entry)
        if self._redact is not None:
            entry["message"] = self._redact(entry["message"])
            if "exception" in entry:
                entry["exception"] = self._redact(entry["exception"])
        return json.dumps(entry, default=str)


def _add_trace(entry: dict[str, Any]) -> None:
    # Only when OpenTelemetry is already in use: never imported for a log line.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        entry["trace_id"] = f"{context.trace_id:032x}"
        entry["span_id"] = f"{context.span_id:016x}"


__all__ = ["FIELDS", "JsonFormatter"]
