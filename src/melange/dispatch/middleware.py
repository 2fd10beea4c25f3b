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
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack

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

    def message_received(self, message: Message, queue: str) -> None:
        for item in self._all():
            with _contained(item, "message_received"):
                item.message_received(message, queue)

    @contextlib.contextmanager
    def consumer_call(self, message: Message, consumer: Consumer) -> Iterator[None]:
        with ExitStack() as stack:
            for item in self._all():
                with _contained(item, "consumer_call"):
                    stack.enter_context(item.consumer_call(message, consumer))
            yield

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        for item in self._all():
            with _contained(item, "consumer_finished"):
                item.consumer_finished(message, consumer, outcome, error)

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        for item in self._all():
            with _contained(item, "message_settled"):
                item.message_settled(message, queue, verdict)

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        for item in self._all():
            with _contained(item, "settle_failed"):
                item.settle_failed(message, queue, error)


@contextlib.contextmanager
def _contained(item: Middleware, hook: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        logger.exception("middleware %r failed in %s; ignored", item, hook)


__all__ = [
    "Middleware",
    "MiddlewareChain",
    "add_process_middleware",
    "remove_process_middleware",
]
