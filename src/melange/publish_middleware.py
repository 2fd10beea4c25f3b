"""Publish middleware: code that runs around every message a publisher sends.

The publish-side twin of :mod:`melange.dispatch.middleware`. A middleware's
:meth:`PublishMiddleware.publishing` context is entered before a message is sent (it may
still add headers to the message, as tracing does with its trace context) and left once the
broker took it, or with the exception that refused it. The blocking and the ``async``
publishers run the same chain: it is part of the destination rules they share
(:class:`~melange.publishers.Destinations`). Contexts nest in the order given (the first
is outermost). A middleware that fails to enter is logged and skipped, so that
instrumentation never stops a message from being sent. ::

    class Audit(PublishMiddleware):
        @contextmanager
        def publishing(self, message, destination, kind):
            message.headers["sent_by"] = "billing"
            yield

    QueuePublisher(JsonSerializer(), backend, middleware=[Audit()])

A middleware given to :func:`install_publish_middleware` runs for every publisher of the
process, before the publisher's own ones (``melange consume --tracing`` installs its tracing
this way, so that what consumers publish carries the trace on).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Literal

from melange.entered_context import EnteredContext
from melange.models import Message

logger = logging.getLogger("melange.publishers")
_FAILED = "publish middleware %r failed; ignored"

#: What a message is published to.
DestinationKind = Literal["queue", "topic"]


class PublishMiddleware:
    """Base class of publish middlewares: override :meth:`publishing`."""

    def active(self) -> bool:
        """Whether the middleware has anything to do now (by default, always). While none of
        a publisher's middlewares is active, it sends on its fastest path, without entering
        their contexts. It is asked at every send, so it must be cheap."""
        return True

    def publishing(
        self, message: Message, destination: str, kind: DestinationKind
    ) -> AbstractContextManager[None]:
        """A context around sending ``message`` to the queue or topic ``destination``:
        entered before the send (headers added to ``message`` then travel with it), left
        after it, with the exception if the send failed."""
        return contextlib.nullcontext()


_installed: tuple[PublishMiddleware, ...] = ()
_installed_lock = threading.Lock()


def install_publish_middleware(middleware: PublishMiddleware) -> None:
    """Run ``middleware`` around the sends of every publisher of this process, from now on
    (publishers made before included)."""
    global _installed
    if not isinstance(middleware, PublishMiddleware):
        raise TypeError(f"publish middleware must subclass PublishMiddleware, got {middleware!r}")
    with _installed_lock:
        if middleware not in _installed:
            _installed = (*_installed, middleware)


def uninstall_publish_middleware(middleware: PublishMiddleware) -> None:
    """Stop running ``middleware`` for every publisher (nothing if it was not installed)."""
    global _installed
    with _installed_lock:
        _installed = tuple(item for item in _installed if item is not middleware)


class PublishMiddlewareChain:
    """Enters the :meth:`~PublishMiddleware.publishing` context of every installed
    middleware, then of the publisher's own, in order."""

    __slots__ = ("_always", "_compiled_for", "_every", "_gates", "_items")

    def __init__(self, items: Sequence[PublishMiddleware] = ()) -> None:
        for item in items:
            if not isinstance(item, PublishMiddleware):
                raise TypeError(
                    "publish middleware must subclass melange.publish_middleware."
                    f"PublishMiddleware, got {item!r}"
                )
        self._items = tuple(items)
        self._compile()

    def _compile(self) -> None:
        installed = _installed
        every = self._every = (*installed, *self._items)
        gated = [type(item).active is not PublishMiddleware.active for item in every]
        # Whether a middleware that is always active runs; else, those that may be dormant,
        # asked at each send.
        self._always = not all(gated)
        self._gates = tuple(item.active for item, gate in zip(every, gated, strict=True) if gate)
        # Last: another thread that sees it sees the rest made for it.
        self._compiled_for = installed

    def __bool__(self) -> bool:
        if self._compiled_for is not _installed:
            self._compile()
        if self._always:
            return True
        for active in self._gates:  # noqa: SIM110 (no generator made per call)
            if active():
                return True
        return False

    def publishing(
        self, messages: Sequence[Message], destination: str, kind: DestinationKind
    ) -> AbstractContextManager[None]:
        """One context around sending ``messages`` (one, or a batch) to ``destination``."""
        if self._compiled_for is not _installed:
            self._compile()
        items = self._every
        if len(items) != 1 or len(messages) != 1:
            return _Sending(items, messages, destination, kind)
        # The common case, one message and one middleware: its context is entered here (the
        # publishers enter this one at once), and needs no list of what was entered.
        item = items[0]
        try:
            context = item.publishing(messages[0], destination, kind)
            if type(context) is _NULL:
                return context  # nothing to do on entering or leaving, nothing to guard
            context.__enter__()
        except Exception:
            logger.exception(_FAILED, item)
            return _NOTHING
        return EnteredContext(item, context, logger, _FAILED)


_NULL = contextlib.nullcontext
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


class _Sending:
    """The middlewares' contexts around one send, nested in order (a class rather than an
    ``ExitStack``: it runs for every message). A context that fails to enter or to exit is
    logged and left out; the send's own exception always goes on."""

    __slots__ = ("_destination", "_entered", "_items", "_kind", "_messages")

    def __init__(
        self,
        items: tuple[PublishMiddleware, ...],
        messages: Sequence[Message],
        destination: str,
        kind: DestinationKind,
    ) -> None:
        self._items = items
        self._messages = messages
        self._destination = destination
        self._kind = kind
        self._entered: list[tuple[PublishMiddleware, AbstractContextManager[None]]] = []

    def __enter__(self) -> None:
        for message in self._messages:
            for item in self._items:
                try:
                    context = item.publishing(message, self._destination, self._kind)
                    context.__enter__()
                except Exception:
                    logger.exception(_FAILED, item)
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
                logger.exception(_FAILED, item)
        self._entered.clear()


__all__ = [
    "DestinationKind",
    "PublishMiddleware",
    "PublishMiddlewareChain",
    "install_publish_middleware",
    "uninstall_publish_middleware",
]
