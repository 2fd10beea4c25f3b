"""OpenTelemetry tracing of publishes and handled messages (``pip install melange[otel]``).

:class:`Tracing` is both a dispatcher :class:`~melange.dispatch.middleware.Middleware` and a
:class:`~melange.publish_middleware.PublishMiddleware`:

- every publish is a ``PRODUCER`` span ``send <destination>``, and the W3C trace context
  (``traceparent``, ``tracestate``) goes into the message's headers, which every backend
  carries;
- every handled message is a ``CONSUMER`` span ``process <queue>`` whose parent is the
  context found in its headers, so the trace goes on across processes and services. It is
  the current span while the consumers run: what they publish joins the same trace.

Attributes follow OpenTelemetry's messaging semantic conventions (``messaging.system``,
``messaging.destination.name``, ``messaging.operation.type``/``name``,
``messaging.message.id``, ``messaging.message.conversation_id`` for the correlation id).
A consumer's failure is recorded as an exception event; a retry (``melange.retry``), a
release (``melange.release``) and a dead letter (``melange.dead_letter``) are events on the
span, and a failed message's span has an error status. ::

    tracing = Tracing.for_backend(backend)
    publisher = QueuePublisher(JsonSerializer(), backend, middleware=[tracing])
    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, middleware=[tracing])

Spans go to the global tracer provider unless one is given; with only ``opentelemetry-api``
installed and no SDK configured, they cost next to nothing and go nowhere.
"""

from __future__ import annotations

import contextlib
import threading
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.dispatch.decisions import Action, Outcome, Verdict
from melange.dispatch.middleware import Middleware
from melange.models import CORRELATION_ID, Message
from melange.publish_middleware import DestinationKind, PublishMiddleware

#: ``messaging.system`` for each backend (by its capabilities' name); the conventions'
#: well-known values where there is one, the backend's name otherwise.
SYSTEMS = {
    "sqs": "aws_sqs",
    "rabbitmq": "rabbitmq",
    "kafka": "kafka",
    "nats": "nats",
    "redis-streams": "redis",
    "memory": "melange_memory",
    "sqlite": "melange_sqlite",
}

#: The instrumentation scope of the spans.
SCOPE = "melange"

# Attribute names, from OpenTelemetry's messaging semantic conventions.
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
# Melange's own.
DESTINATION_KIND = "melange.destination.kind"
ATTEMPT = "melange.attempt"
OUTCOME = "melange.outcome"
CONSUMER = "melange.consumer"


def messaging_system(backend: MessagingBackend | AsyncMessagingBackend) -> str:
    """The ``messaging.system`` value for ``backend``."""
    name = backend.capabilities.name
    return SYSTEMS.get(name, name)


class Tracing(Middleware, PublishMiddleware):
    """Spans for publishes and handled messages, and the trace context in the headers.

    Args:
        system: The ``messaging.system`` attribute (see :func:`messaging_system`).
        tracer_provider: Where spans go; the global provider by default.
        propagator: How the context is written into and read from headers; the global one
            by default (W3C trace context and baggage unless configured otherwise).
        max_open_spans: Spans of messages still being handled, at most; past that the
            oldest is ended (a message given back when its consumer stopped the process is
            never settled).
    """

    def __init__(
        self,
        system: str = "melange",
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        max_open_spans: int = 10_000,
    ) -> None:
        self.system = system
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._provider = tracer_provider
        self._propagator = propagator
        self._max_open = max_open_spans
        # id(message) -> (message, span): the message is held so that its id is not reused.
        self._open: dict[int, tuple[Message, Span]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_backend(
        cls, backend: MessagingBackend | AsyncMessagingBackend, **kwargs: Any
    ) -> Tracing:
        """A :class:`Tracing` whose ``messaging.system`` is ``backend``'s."""
        return cls(messaging_system(backend), **kwargs)

    # -- publishing -------------------------------------------------------------------------

    def _active(self) -> bool:
        """Whether spans go anywhere: not while no SDK is set up (the API's no-op tracer),
        so that installing ``melange[otel]`` without exporting costs next to nothing."""
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        return not isinstance(provider, NoOpTracerProvider | ProxyTracerProvider)

    def publishing(
        self, message: Message, destination: str, kind: DestinationKind
    ) -> AbstractContextManager[None]:
        if not self._active():
            return contextlib.nullcontext()
        attributes: dict[str, Any] = {
            SYSTEM: self.system,
            DESTINATION: destination,
            OPERATION_TYPE: "send",
            OPERATION_NAME: "send",
            MESSAGE_ID: message.message_id,
        }
        correlation = message.headers.get(CORRELATION_ID)
        if correlation is not None:
            attributes[CONVERSATION_ID] = correlation
        span = self._tracer.start_span(
            f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        if kind == "topic":
            span.set_attribute(DESTINATION_KIND, kind)
        self._inject(message, span)
        return _Sending(span)

    def _inject(self, message: Message, span: Span) -> None:
        carrier: dict[str, str] = {}
        ctx = trace.set_span_in_context(span)
        if self._propagator is not None:
            self._propagator.inject(carrier, context=ctx)
        else:
            propagate.inject(carrier, context=ctx)
        message.headers.update(carrier)

    # -- consuming --------------------------------------------------------------------------

    def message_received(self, message: Message, queue: str) -> None:
        if not self._active():
            return
        headers = message.headers
        if self._propagator is not None:
            parent = self._propagator.extract(headers)
        else:
            parent = propagate.extract(headers)
        attributes: dict[str, Any] = {
            SYSTEM: self.system,
            DESTINATION: queue,
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
            MESSAGE_ID: message.message_id,
        }
        correlation = headers.get(CORRELATION_ID)
        if correlation is not None:
            attributes[CONVERSATION_ID] = correlation
        if message.attempt is not None:
            attributes[ATTEMPT] = message.attempt
        span = self._tracer.start_span(
            f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        evicted: Span | None = None
        with self._lock:
            self._open[id(message)] = (message, span)
            if len(self._open) > self._max_open:
                oldest = next(iter(self._open))
                evicted = self._open.pop(oldest)[1]
        if evicted is not None:
            evicted.set_attribute(OUTCOME, "unknown")
            evicted.end()

    def _span(self, message: Message) -> Span | None:
        entry = self._open.get(id(message))
        if entry is None or entry[0] is not message:
            return None
        return entry[1]

    def _close(self, message: Message) -> Span | None:
        with self._lock:
            entry = self._open.get(id(message))
            if entry is None or entry[0] is not message:
                return None
            del self._open[id(message)]
        return entry[1]

    def consumer_call(self, message: Message, consumer: Consumer) -> AbstractContextManager[None]:
        span = self._span(message)
        if span is None:
            return contextlib.nullcontext()
        return _Current(span)

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        span = self._span(message)
        if span is None:
            return
        if error is not None:
            span.record_exception(error, attributes={CONSUMER: consumer.name})
        elif outcome is not Outcome.SUCCEEDED:
            span.add_event(f"melange.{outcome.value}", {CONSUMER: consumer.name})

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        span = self._close(message)
        if span is None:
            return
        action = verdict.action
        span.set_attribute(OUTCOME, action.value)
        if action is Action.RETRY:
            span.add_event(
                "melange.retry",
                {
                    "melange.retry.delay": verdict.delay,
                    ATTEMPT: message.attempt or 1,
                    "melange.reason": verdict.reason,
                    CONSUMER: verdict.consumer,
                },
            )
            span.set_status(Status(StatusCode.ERROR, verdict.exception_type or "retry"))
        elif action is Action.DEAD_LETTER:
            span.add_event(
                "melange.dead_letter",
                {
                    "melange.reason": verdict.reason,
                    "melange.exception": verdict.exception_type,
                    ATTEMPT: message.attempt or 1,
                    CONSUMER: verdict.consumer,
                },
            )
            span.set_status(Status(StatusCode.ERROR, verdict.exception_type or "dead-lettered"))
        elif action is Action.RELEASE:
            span.add_event(
                "melange.release",
                {"melange.release.delay": verdict.delay, "melange.reason": verdict.reason},
            )
        elif action is Action.ABANDON:
            span.add_event("melange.abandon", {"melange.reason": verdict.reason})
        span.end()

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        span = self._close(message)
        if span is None:
            return
        span.set_attribute(OUTCOME, "unsettled")
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


class _Sending:
    """Ends a producer span when the send is done, recording its failure."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


class _Current:
    """Makes a message's span the current one while a consumer runs: what it publishes, and
    the spans of the libraries it calls, join the trace."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None


__all__ = ["SYSTEMS", "Tracing", "messaging_system"]
