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
from melange.entered_context import EnteredContext
from melange.models import Message

logger = logging.getLogger("melange.dispatcher")
# What _failed logs for a consumer call's context that failed to exit.
_CALL_FAILED = "middleware %r failed in consumer_call; ignored"


class Middleware:
    """Base class of middlewares: override the hooks you need; each default does nothing."""

    def active(self) -> bool:
        """Whether the middleware has anything to do now (by default, always). While none of
        a dispatcher's middlewares is active, it skips the hooks and keeps its fastest path,
        so a middleware that can be dormant (tracing with no SDK set up) costs next to
        nothing then. It is asked at every hook, so it must be cheap; one that turns active
        while a message is handled may see that message's later hooks without its earlier
        ones."""
        return True

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


#: The hooks a chain calls; a middleware that keeps a hook's default is not called for it.
_HOOKS = (
    "message_received",
    "consumer_call",
    "consumer_finished",
    "message_settled",
    "settle_failed",
)


def _overrides(item: Middleware, hook: str) -> bool:
    """Whether ``item`` does something in ``hook`` (its class, or the object itself, replaces
    the default that does nothing)."""
    return getattr(type(item), hook) is not getattr(Middleware, hook) or hook in getattr(
        item, "__dict__", ()
    )


class MiddlewareChain:
    """Calls every middleware's hook in order, and contains their failures.

    The chain is compiled: for each hook, the bound methods of the middlewares that override
    it, made once (again when the process-wide middleware changes). A hook no middleware
    overrides costs nothing, and a chain is false (the dispatcher keeps its fastest path and
    calls no hook) while none of its middlewares that override a hook is
    :meth:`~Middleware.active`.
    """

    __slots__ = (
        "_always",
        "_calls",
        "_compiled_for",
        "_failed_settles",
        "_finished",
        "_gates",
        "_items",
        "_received",
        "_settled",
    )

    def __init__(self, items: Sequence[Middleware] = ()) -> None:
        for item in items:
            if not isinstance(item, Middleware):
                raise TypeError(
                    f"middleware must subclass melange.dispatch.Middleware, got {item!r}"
                )
        self._items = tuple(items)
        self._compile()

    def _compile(self) -> None:
        wide = _process_wide
        every = (*self._items, *wide)
        hooks = [
            tuple((item, getattr(item, hook)) for item in every if _overrides(item, hook))
            for hook in _HOOKS
        ]
        self._received, self._calls, self._finished, self._settled, self._failed_settles = hooks
        hooked = [item for item in every if any(_overrides(item, hook) for hook in _HOOKS)]
        # Whether a middleware that is always active has hooks; else, the middlewares that
        # may be dormant, asked each time.
        self._always = any(not _overrides(item, "active") for item in hooked)
        self._gates = tuple(item.active for item in hooked if _overrides(item, "active"))
        # Last: another thread that sees it sees the hooks made for it.
        self._compiled_for = wide

    def __bool__(self) -> bool:
        if self._compiled_for is not _process_wide:
            self._compile()
        if self._always:
            return True
        for active in self._gates:  # noqa: SIM110 (no generator made per call)
            if active():
                return True
        return False

    def extended(self, items: Sequence[Middleware]) -> MiddlewareChain:
        """This chain followed by ``items``."""
        return MiddlewareChain((*self._items, *items))

    # The hooks run several times per message: plain loops and try blocks, no context
    # managers built per call.

    def message_received(self, message: Message, queue: str) -> None:
        if self._compiled_for is not _process_wide:
            self._compile()
        for item, hook in self._received:
            try:
                hook(message, queue)
            except Exception:
                _failed(item, "message_received")

    def consumer_call(self, message: Message, consumer: Consumer) -> AbstractContextManager[None]:
        """The middlewares' contexts around one call of ``consumer``, nested in order and
        entered now (the dispatcher enters the one returned at once). A context that fails
        to enter or to exit is logged and left out; the consumer's own exception goes on."""
        if self._compiled_for is not _process_wide:
            self._compile()
        calls = self._calls
        if len(calls) == 1:
            # The common case: no list of what was entered.
            item, hook = calls[0]
            try:
                context = hook(message, consumer)
                if type(context) is _NULL:
                    return context  # nothing to do on entering or leaving, nothing to guard
                context.__enter__()
            except Exception:
                _failed(item, "consumer_call")
                return _NOTHING
            return EnteredContext(item, context, logger, _CALL_FAILED)
        entered: list[tuple[Middleware, AbstractContextManager[None]]] = []
        for item, hook in calls:
            try:
                context = hook(message, consumer)
                if type(context) is _NULL:
                    continue  # nothing to leave
                context.__enter__()
            except Exception:
                _failed(item, "consumer_call")
                continue
            entered.append((item, context))
        return _Entries(entered) if entered else _NOTHING

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        if self._compiled_for is not _process_wide:
            self._compile()
        for item, hook in self._finished:
            try:
                hook(message, consumer, outcome, error)
            except Exception:
                _failed(item, "consumer_finished")

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        if self._compiled_for is not _process_wide:
            self._compile()
        for item, hook in self._settled:
            try:
                hook(message, queue, verdict)
            except Exception:
                _failed(item, "message_settled")

    def settle_failed(self, message: Message, queue: str, error: BaseException) -> None:
        if self._compiled_for is not _process_wide:
            self._compile()
        for item, hook in self._failed_settles:
            try:
                hook(message, queue, error)
            except Exception:
                _failed(item, "settle_failed")


_NULL = contextlib.nullcontext
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


class _Entries:
    """Leaves the entered contexts of the middlewares around a consumer call, innermost
    first. A context that fails to exit is logged and left out; the consumer's own exception
    always goes on."""

    __slots__ = ("_entered",)

    def __init__(self, entered: list[tuple[Middleware, AbstractContextManager[None]]]) -> None:
        self._entered = entered

    def __enter__(self) -> None:
        return None

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


def _failed(item: Middleware, hook: str) -> None:
    logger.exception("middleware %r failed in %s; ignored", item, hook)


__all__ = [
    "Middleware",
    "MiddlewareChain",
    "add_process_middleware",
    "remove_process_middleware",
]
