"""Middleware: code that runs around every message a dispatcher handles.

A middleware sees each message as it arrives, wraps each call of a consumer, learns each
consumer's outcome and how the message was settled. Tracing, metrics and audit logs plug in
here; both dispatchers (threaded and asyncio) run the same chain, because it is called by the
one dispatch engine they share. Middlewares run in the order given, and their
:meth:`Middleware.consumer_call` contexts nest in that order (the first is outermost).

Middleware added with :func:`add_process_middleware` runs in every dispatcher of the process,
after each one's own (a test harness watches the services under test this way, whatever
dispatcher they build).

A middleware must not raise: an exception it raises is logged and ignored, so that
instrumentation can never lose a message. ::

    class Timing(Middleware):
        @contextmanager
        def consumer_call(self, message, consumer):
            started = time.perf_counter()
            yield
            print(consumer.name, time.perf_counter() - started)

    MessageDispatcher(JsonSerializer(), backend=backend, middleware=[Timing()])
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from types import TracebackType

from melange.consumers import Consumer
from melange.dispatch.decisions import Outcome, Verdict
from melange.models import Message

logger = logging.getLogger("melange.dispatcher")


class Middleware:
    """Base class of middlewares: override the hooks you need; each default does nothing."""

    def message_received(self, message: Message, queue: str) -> None:
        """``message`` arrived from ``queue`` and is about to be handled."""

    def consumer_call(self, message: Message, consumer: Consumer) -> AbstractContextManager[None]:
        """A context around one call of ``consumer`` (each immediate retry is a call): entered
        just before it, left just after, in the context the consumer runs in."""
        return contextlib.nullcontext()

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        """``consumer`` is done with ``message``: succeeded, failed (with ``error``), skipped
        as a duplicate, or not run (its claim is held elsewhere, or the cache is down)."""

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        """``message`` was settled as ``verdict`` says (acknowledged, retried, released,
        dead-lettered, or abandoned to the broker)."""

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        """Settling ``message`` failed with ``error`` (a broker error): the broker delivers
        it again, and no :meth:`message_settled` follows for this delivery."""


_process_wide: tuple[Middleware, ...] = ()
_process_wide_lock = threading.Lock()


def add_process_middleware(item: Middleware) -> None:
    """Run ``item`` in every dispatcher of the process from now on, after its own
    middleware, until :func:`remove_process_middleware`."""
    if not isinstance(item, Middleware):
        raise TypeError(f"middleware must subclass melange.dispatch.Middleware, got {item!r}")
    global _process_wide
    with _process_wide_lock:
        _process_wide = (*_process_wide, item)


def remove_process_middleware(item: Middleware) -> None:
    """Stop running ``item`` in every dispatcher (nothing if it was not added)."""
    global _process_wide
    with _process_wide_lock:
        _process_wide = tuple(other for other in _process_wide if other is not item)


class MiddlewareChain:
    """Calls every middleware's hook in order, and contains their failures."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Middleware] = ()) -> None:
        for item in items:
            if not isinstance(item, Middleware):
                raise TypeError(
                    f"middleware must subclass melange.dispatch.Middleware, got {item!r}"
                )
        self._items = tuple(items)

    def __bool__(self) -> bool:
        return bool(self._items or _process_wide)

    def _all(self) -> tuple[Middleware, ...]:
        """This chain's middleware, then the process-wide ones."""
        return (*self._items, *_process_wide) if _process_wide else self._items

    def extended(self, items: Sequence[Middleware]) -> MiddlewareChain:
        """This chain followed by ``items``."""
        return MiddlewareChain((*self._items, *items))

    # The hooks run several times per message: plain loops and try blocks, no context
    # managers built per call.

    def message_received(self, message: Message, queue: str) -> None:
        for item in self._all():
            try:
                item.message_received(message, queue)
            except Exception:
                _failed(item, "message_received")

    def consumer_call(self, message: Message, consumer: Consumer) -> AbstractContextManager[None]:
        return _ConsumerCall(self._all(), message, consumer)

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        for item in self._all():
            try:
                item.consumer_finished(message, consumer, outcome, error)
            except Exception:
                _failed(item, "consumer_finished")

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        for item in self._all():
            try:
                item.message_settled(message, queue, verdict)
            except Exception:
                _failed(item, "message_settled")

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        for item in self._all():
            try:
                item.settle_failed(message, queue, error)
            except Exception:
                _failed(item, "settle_failed")


class _ConsumerCall:
    """The middlewares' contexts around one consumer call, nested in order. A middleware
    whose context fails to enter or to exit is logged and left out; the consumer's own
    exception always goes on."""

    __slots__ = ("_consumer", "_entered", "_items", "_message")

    def __init__(self, items: tuple[Middleware, ...], message: Message, consumer: Consumer) -> None:
        self._items = items
        self._message = message
        self._consumer = consumer
        self._entered: list[tuple[Middleware, AbstractContextManager[None]]] = []

    def __enter__(self) -> None:
        for item in self._items:
            try:
                context = item.consumer_call(self._message, self._consumer)
                context.__enter__()
            except Exception:
                _failed(item, "consumer_call")
                continue
            self._entered.append((item, context))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for item, context in reversed(self._entered):
            try:
                context.__exit__(exc_type, exc, traceback)
            except Exception:
                _failed(item, "consumer_call")
        self._entered.clear()


def _failed(item: Middleware, hook: str) -> None:
    logger.exception("middleware %r failed in %s; ignored", item, hook)


__all__ = [
    "Middleware",
    "MiddlewareChain",
    "add_process_middleware",
    "remove_process_middleware",
]
