"""Keeps the messages in hand invisible to other consumers while handlers run long.

One schedule, :class:`Heartbeat`, renews every lease a third of the way through it, for both
dispatchers. It calls the renewals it is given from its own thread: blocking calls directly,
and the coroutines of an asynchronous backend or cache through a :class:`LoopBridge`, which
submits them to the dispatcher's event loop without waiting for them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from melange.backends.interfaces import MessagingBackend
from melange.models import Message

_T = TypeVar("_T")

logger = logging.getLogger("melange.dispatcher")

#: A lease is renewed each time this fraction of it has passed (a third: two renewals may
#: fail before it runs out).
RENEWAL_FRACTION = 1 / 3

#: How long the renewal thread waits for new messages before it ends.
_IDLE_GRACE_SECONDS = 5.0


class Heartbeat:
    """Renews leases while their messages are in hand: every third of each lease.

    Two kinds of lease are kept alive: a received message's visibility lease, from
    ``lease_for(message)`` (so queues with different timeouts are each renewed in time), and a
    deduplication claim, which is kept short so that a crashed process's claims expire within
    seconds, and renewed here while its handler runs. A background thread runs while anything
    is registered, and ends when nothing is left or on :meth:`close`.

    A renewal (``extend(message, seconds)``, or the ``renew(key, seconds)`` of a claim) is
    called on that thread. It either answers at once, or returns a
    :class:`concurrent.futures.Future` (see :class:`LoopBridge`) whose result is read when it
    comes; a renewal still pending when the next one is due is not repeated.

    Args:
        extend: Extends a message's lease (``MessagingBackend.extend_visibility``).
        lease_for: A message's lease in seconds, ``None`` for none
            (``MessagingBackend.visibility_timeout_for``).
    """

    def __init__(
        self,
        extend: Callable[[Message, float], Any],
        lease_for: Callable[[Message], float | None],
    ) -> None:
        self._extend = extend
        self._lease_for = lease_for
        # Renewals on their way, by entry key: handed to an event loop and not answered yet,
        # or being called on the heartbeat's thread (a future it completes when the call
        # returns). What unregisters an entry waits for its renewal (see remove_batch).
        self._pending: dict[object, Future[Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # key -> (renew(target, lease), target, lease seconds, next renewal time); a message
        # is keyed by its id(), a claim by its cache key.
        self._entries: dict[object, tuple[Callable[[Any, float], Any], Any, float, float]] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        # When the thread, waiting, wakes by itself (None: it is not waiting, and looks at
        # the entries again before it does). A new entry due no earlier needs no wake-up:
        # consume loops register a batch every few messages, and waking the thread for each
        # would cost a thread switch per batch.
        self._asleep_until: float | None = None

    @classmethod
    def for_backend(cls, backend: MessagingBackend) -> Heartbeat:
        """The heartbeat of a blocking ``backend``'s message leases."""
        return cls(backend.extend_visibility, backend.visibility_timeout_for)

    def add(self, message: Message) -> None:
        """Renew ``message``'s lease until :meth:`remove` is called."""
        self.add_batch((message,))

    def add_batch(self, messages: Sequence[Message], since: float | None = None) -> None:
        """Renew the leases of a batch received together (one lookup of the lease for all).

        ``since`` is when their leases began (``time.monotonic()``), if earlier than now: a
        receive answered late has its first renewal brought forward. A message already
        watched keeps its earlier renewal.
        """
        if not messages:
            return
        lease = self._lease_for(messages[0])
        if lease is None or lease <= 0:
            return
        due = (time.monotonic() if since is None else since) + lease * RENEWAL_FRACTION
        extend = self._extend
        with self._lock:
            entries = self._entries
            for message in messages:
                known = entries.get(id(message))
                at = due if known is None or known[1] is not message else min(due, known[3])
                entries[id(message)] = (extend, message, lease, at)
            self._ensure_running(due)

    def add_claim(self, key: str, lease: float, renew: Callable[[str, float], Any]) -> None:
        """Renew the deduplication claim on ``key`` with ``renew(key, lease)`` until
        :meth:`remove_claim`; a ``False`` answer (the claim was lost) ends the renewals."""
        due = time.monotonic() + lease * RENEWAL_FRACTION
        with self._lock:
            self._entries[("claim", key)] = (renew, key, lease, due)
            self._ensure_running(due)

    def remove_claim(self, key: str) -> list[Future[Any]]:
        """Stop renewing the claim on ``key``; returns its renewal still on its way, if any
        (see :meth:`remove_batch`)."""
        with self._lock:
            self._entries.pop(("claim", key), None)
            found = self._pending.get(("claim", key))
        return [found] if found is not None else []

    def remove(self, message: Message) -> list[Future[Any]]:
        """Stop renewing ``message``'s lease (see :meth:`remove_batch`)."""
        return self.remove_batch((message,))

    def remove_batch(self, messages: Sequence[Message]) -> list[Future[Any]]:
        """Stop renewing the leases of ``messages``; returns the renewals of theirs still on
        their way.

        No renewal of theirs starts after this returns, but one already sent may reach the
        broker later: wait for the returned futures before giving a message back (a release
        or a retry delay), or that renewal would hide the message again for a whole lease.
        """
        if not messages:
            return []
        with self._lock:
            entries, pending = self._entries, self._pending
            on_way: list[Future[Any]] = []
            for message in messages:
                key = id(message)
                entry = entries.pop(key, None)
                if pending and entry is not None and entry[1] is message:
                    found = pending.get(key)
                    if found is not None:
                        on_way.append(found)
        return on_way

    def _ensure_running(self, due: float) -> None:
        # Called with the lock held.
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="melange-heartbeat", daemon=True)
            self._thread.start()
        asleep_until = self._asleep_until
        if asleep_until is not None and due < asleep_until:
            self._wake.notify()

    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                if not self._closed and not self._entries:
                    # Idle: linger a while (consume loops register batch after batch), then end
                    # the thread; the next add() starts a new one.
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since < _IDLE_GRACE_SECONDS:
                        # Until the grace ends, not for ever: a batch registered after the
                        # last one was settled wakes the thread only if its first renewal
                        # falls before then (not once per batch).
                        ends = idle_since + _IDLE_GRACE_SECONDS
                        self._sleep(ends, ends - now)
                        continue
                if self._closed or not self._entries:
                    self._thread = None
                    return
                idle_since = None
                now = time.monotonic()
                due = [(key, entry) for key, entry in self._entries.items() if entry[3] <= now]
                for key, (renew, target, lease, _) in due:
                    self._entries[key] = (renew, target, lease, now + lease * RENEWAL_FRACTION)
                if not due:
                    next_at = min(entry[3] for entry in self._entries.values())
                    pause = max(0.01, next_at - now)
                    self._sleep(now + pause, pause)
                    continue
                # A renewal still on its way (on a busy loop) is not piled up with another.
                due = [(key, entry) for key, entry in due if key not in self._pending]
            for key, (renew, target, lease, _) in due:
                calling: Future[Any] = Future()
                with self._lock:
                    # Unregistered meanwhile (settled, given back): not renewed any more.
                    found = self._entries.get(key)
                    if found is None or found[1] is not target:
                        continue
                    self._pending[key] = calling
                try:
                    kept = renew(target, lease)
                except Exception:
                    logger.warning(
                        "could not renew the lease of %s", _describe(target), exc_info=True
                    )
                    self._called(key, calling)
                    continue
                if isinstance(kept, Future):
                    with self._lock:
                        self._pending[key] = kept
                    calling.set_result(None)  # the call is done; the loop's answer is awaited
                    kept.add_done_callback(functools.partial(self._answered, key, target))
                else:
                    self._called(key, calling)
                    self._kept(key, target, kept)

    def _called(self, key: object, calling: Future[Any]) -> None:
        """A renewal called on this thread returned (or raised)."""
        with self._lock:
            if self._pending.get(key) is calling:
                del self._pending[key]
        calling.set_result(None)

    def _sleep(self, until: float, seconds: float) -> None:
        """Wait (lock held) until ``until`` by the clock, ``seconds`` from now, or until an
        entry due earlier is added."""
        self._asleep_until = until
        try:
            self._wake.wait(seconds)
        finally:
            self._asleep_until = None

    def _answered(self, key: object, target: Any, future: Future[Any]) -> None:
        """A renewal handed to an event loop finished (on the loop's thread)."""
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]
        try:
            kept = future.result()
        except Exception:  # including CancelledError: the loop went away
            logger.warning("could not renew the lease of %s", _describe(target), exc_info=True)
            return
        self._kept(key, target, kept)

    def _kept(self, key: object, target: Any, kept: Any) -> None:
        if kept is False:
            # The claim expired and may be someone else's now: stop renewing it.
            logger.warning("lost the deduplication claim on %s", target)
            with self._lock:
                if self._entries.get(key, (None, None))[1] is target:
                    del self._entries[key]

    def close(self) -> None:
        """Stop the background thread."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)


class LoopBridge:
    """Hands renewals from the heartbeat's thread to the event loop a dispatcher runs on.

    :meth:`attach` (called on the loop) says which loop; a function wrapped with
    :meth:`renewal` then submits its coroutine there with ``run_coroutine_threadsafe`` and
    returns the future at once, so a busy loop never holds up the heartbeat's other renewals.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> None:
        """Submit to the running event loop from now on (call it on that loop)."""
        self._loop = asyncio.get_running_loop()

    def renewal(
        self, fn: Callable[[_T, float], Coroutine[Any, Any, Any]]
    ) -> Callable[[_T, float], Future[Any]]:
        """``fn`` as a renewal the heartbeat can call from its thread."""

        def submit(target: _T, seconds: float) -> Future[Any]:
            loop = self._loop
            if loop is None or loop.is_closed():
                raise RuntimeError("the dispatcher's event loop is not running")
            coroutine = fn(target, seconds)
            try:
                return asyncio.run_coroutine_threadsafe(coroutine, loop)
            except BaseException:
                coroutine.close()  # never scheduled: no "was never awaited" warning
                raise

        return submit


def _describe(target: Any) -> str:
    if isinstance(target, Message):
        return f"message {target.message_id}"
    return f"claim {target}"
