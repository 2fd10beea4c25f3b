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
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator, default_getter
from opentelemetry.trace import (
    NonRecordingSpan,
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

# What a hook returns when it has nothing to wrap (a nullcontext can be entered many times).
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_NO_SDK = (NoOpTracerProvider, ProxyTracerProvider)
_UNKNOWN = object()
# Destinations and queues whose span name and attributes are kept, at most.
_MADE_AT_MOST = 1024
# The outcome attribute of each action (an enum's value is a property, read per message).
_OUTCOMES = {action: action.value for action in Action}


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads the propagated fields of a message's headers: what the API's default getter
    returns, without its ``isinstance(value, Iterable)`` (an ABC check, three times per
    message) for the string values headers hold."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if type(value) is str:
            return [value]
        return default_getter.get(carrier, key)

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return default_getter.keys(carrier)


_GETTER = _HeaderGetter()


def _global_provider() -> object:
    """The global tracer provider once one is set, else ``None``.

    ``trace.get_tracer_provider()`` looks the environment up at each call while none is set
    (about 1.5 µs); the API keeps the provider in a module variable that is set once, and
    reading it costs next to nothing. An API without that variable is asked the public way.
    """
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN:
        found = trace.get_tracer_provider()
        return None if isinstance(found, ProxyTracerProvider) else found
    return provider


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
        # With no provider given, this is the API's proxy tracer, which turns into the SDK's
        # once one is set up (reading the global provider also loads one named in the
        # environment, OTEL_PYTHON_TRACER_PROVIDER).
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._propagator = propagator
        self._max_open = max_open_spans
        # Whether spans go anywhere: decided once for a given provider, and once the global
        # one is set (it is set only once); None while no global provider is set yet.
        self._live: bool | None = (
            None if tracer_provider is None else not isinstance(tracer_provider, _NO_SDK)
        )
        # id(message) -> its span's context manager, which holds the message so that its id
        # is not reused.
        self._open: dict[int, _Current] = {}
        self._lock = threading.Lock()
        # Span names and the attributes that do not change from one message to the next,
        # per destination (and kind) and per queue: made once, not per message.
        self._sends: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._processes: dict[str, tuple[str, dict[str, Any]]] = {}

    @classmethod
    def for_backend(
        cls, backend: MessagingBackend | AsyncMessagingBackend, **kwargs: Any
    ) -> Tracing:
        """A :class:`Tracing` whose ``messaging.system`` is ``backend``'s."""
        return cls(messaging_system(backend), **kwargs)

    # -- publishing -------------------------------------------------------------------------

    def active(self) -> bool:
        """Whether spans go anywhere: not while no SDK is set up (the API's no-op tracer),
        so that installing ``melange[otel]`` without exporting costs next to nothing (the
        dispatchers and publishers skip a dormant middleware). An SDK set up later is picked
        up at the next message."""
        live = self._live
        if live is None:
            provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)  # see _global_provider
            if provider is _UNKNOWN:
                provider = _global_provider()
            if provider is None:
                return False
            live = not isinstance(provider, _NO_SDK)
            if live:
                # The provider's own tracer: the API's proxy would hand every call to it.
                self._tracer = trace.get_tracer(SCOPE, tracer_provider=provider)  # type: ignore[arg-type]
            self._live = live
        return live

    def publishing(
        self, message: Message, destination: str, kind: DestinationKind
    ) -> AbstractContextManager[None]:
        live = self._live
        if not (live or (live is None and self.active())):
            return _NOTHING
        made = self._sends.get((destination, kind))
        if made is None:
            if len(self._sends) >= _MADE_AT_MOST:
                self._sends.clear()  # names made on the fly: keep the memory bounded
            made = self._sends[(destination, kind)] = self._send_attributes(destination, kind)
        name, constant = made
        attributes = {**constant, MESSAGE_ID: message.message_id}
        correlation = message.headers.get(CORRELATION_ID)
        if correlation is not None:
            attributes[CONVERSATION_ID] = correlation
        span = self._tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        # Injected whether the span records or not: a trace sampled out carries its
        # "not sampled" flag on, so that the consumers' spans are sampled out alike.
        self._inject(message, span)
        if type(span) is NonRecordingSpan:
            return _NOTHING  # sampled out: ending it, or recording on it, does nothing
        return _Sending(span)

    def _send_attributes(self, destination: str, kind: str) -> tuple[str, dict[str, Any]]:
        attributes: dict[str, Any] = {
            SYSTEM: self.system,
            DESTINATION: destination,
            OPERATION_TYPE: "send",
            OPERATION_NAME: "send",
        }
        if kind == "topic":
            attributes[DESTINATION_KIND] = kind
        return f"send {destination}", attributes

    def _inject(self, message: Message, span: Span) -> None:
        ctx = trace.set_span_in_context(span)
        headers = message.headers
        # Straight into the headers when they are a plain dict (they are, from a publisher).
        carrier: dict[str, str] = headers if type(headers) is dict else {}
        propagator = self._propagator
        if propagator is None:
            propagator = propagate.get_global_textmap()  # what propagate.inject calls
        propagator.inject(carrier, context=ctx)
        if carrier is not headers:
            headers.update(carrier)

    # -- consuming --------------------------------------------------------------------------

    def message_received(self, message: Message, queue: str) -> None:
        live = self._live
        if not (live or (live is None and self.active())):
            return
        headers = message.headers
        propagator = self._propagator
        if propagator is None:
            propagator = propagate.get_global_textmap()
        parent = propagator.extract(headers, getter=_GETTER)
        made = self._processes.get(queue)
        if made is None:
            if len(self._processes) >= _MADE_AT_MOST:
                self._processes.clear()
            made = self._processes[queue] = (
                f"process {queue}",
                {
                    SYSTEM: self.system,
                    DESTINATION: queue,
                    OPERATION_TYPE: "process",
                    OPERATION_NAME: "process",
                },
            )
        name, constant = made
        attributes = {**constant, MESSAGE_ID: message.message_id}
        correlation = headers.get(CORRELATION_ID)
        if correlation is not None:
            attributes[CONVERSATION_ID] = correlation
        if message.attempt is not None:
            attributes[ATTEMPT] = message.attempt
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        opened = self._open
        # No lock: setting and popping one key are atomic, and while a message is held here
        # no other object can have its id. Only evicting takes one.
        opened[id(message)] = _Current(message, span)
        if len(opened) > self._max_open:
            self._evict()

    def _evict(self) -> None:
        evicted: list[Span] = []
        with self._lock:
            opened = self._open
            while len(opened) > self._max_open:
                try:
                    oldest = next(iter(opened))
                    evicted.append(opened.pop(oldest).span)
                except (RuntimeError, KeyError):  # another thread changed it meanwhile
                    continue
        for span in evicted:
            span.set_attribute(OUTCOME, "unknown")
            span.end()

    def _span(self, message: Message) -> Span | None:
        opened = self._open
        if not opened:
            return None
        entry = opened.get(id(message))
        return None if entry is None else entry.span

    def _close(self, message: Message) -> Span | None:
        opened = self._open
        if not opened:
            return None
        entry = opened.pop(id(message), None)
        return None if entry is None else entry.span

    def consumer_call(self, message: Message, consumer: Consumer) -> AbstractContextManager[None]:
        opened = self._open
        entry = opened.get(id(message)) if opened else None
        if entry is None:
            return _NOTHING
        if entry.entered():  # a call within a call of the same message: a context of its own
            return _Current(message, entry.span)
        return entry

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        span = self._span(message)
        if span is None or type(span) is NonRecordingSpan:
            return  # nothing recorded on a span sampled out
        if error is not None:
            span.record_exception(error, attributes={CONSUMER: consumer.name})
        elif outcome is not Outcome.SUCCEEDED:
            span.add_event(f"melange.{outcome.value}", {CONSUMER: consumer.name})

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        span = self._close(message)
        if span is None or type(span) is NonRecordingSpan:
            return  # nothing recorded on a span sampled out, and ending it does nothing
        action = verdict.action
        span.set_attribute(OUTCOME, _OUTCOMES[action])
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
    the spans of the libraries it calls, join the trace. One is made per handled message,
    kept until it is settled, and entered by each consumer call in turn."""

    __slots__ = ("_token", "message", "span")

    def __init__(self, message: Message, span: Span) -> None:
        self.message = message
        self.span = span
        self._token: Token[Context] | None = None

    def entered(self) -> bool:
        """Whether a consumer call is inside it now."""
        return self._token is not None

    def __enter__(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            otel_context.detach(token)


__all__ = ["SYSTEMS", "Tracing", "messaging_system"]
