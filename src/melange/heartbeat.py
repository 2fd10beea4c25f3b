"""Keeps the messages in hand invisible to other consumers while handlers run long."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from melange.backends.interfaces import MessagingBackend
from melange.models import Message

logger = logging.getLogger("melange.dispatcher")

#: How long the renewal thread waits for new messages before it ends.
_IDLE_GRACE_SECONDS = 5.0


class Heartbeat:
    """Renews the lease of each registered message every third of its visibility timeout.

    Each message's lease comes from ``backend.visibility_timeout_for(message)``, so queues
    with different timeouts are each renewed in time. A background thread runs while messages
    are registered, and ends when none are left or on :meth:`close`.
    """

    def __init__(self, backend: MessagingBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # id(message) -> (message, lease seconds, next renewal time)
        self._messages: dict[int, tuple[Message, float, float]] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, message: Message) -> None:
        """Renew ``message``'s lease until :meth:`remove` is called."""
        self.add_batch((message,))

    def add_batch(self, messages: Sequence[Message]) -> None:
        """Renew the leases of a batch received together (one lookup of the lease for all)."""
        if not messages:
            return
        lease = self._backend.visibility_timeout_for(messages[0])
        if lease is None or lease <= 0:
            return
        due = time.monotonic() + lease / 3
        with self._lock:
            for message in messages:
                self._messages[id(message)] = (message, lease, due)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="melange-heartbeat", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def remove(self, message: Message) -> None:
        """Stop renewing ``message``'s lease."""
        with self._lock:
            self._messages.pop(id(message), None)

    def remove_batch(self, messages: Sequence[Message]) -> None:
        """Stop renewing the leases of ``messages``."""
        with self._lock:
            for message in messages:
                self._messages.pop(id(message), None)

    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                if not self._closed and not self._messages:
                    # Idle: linger a while (consume loops register batch after batch), then end
                    # the thread; the next add() starts a new one.
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since < _IDLE_GRACE_SECONDS:
                        self._wake.wait(_IDLE_GRACE_SECONDS - (now - idle_since))
                        continue
                if self._closed or not self._messages:
                    self._thread = None
                    return
                idle_since = None
                now = time.monotonic()
                due = [(m, lease) for m, lease, at in self._messages.values() if at <= now]
                for message, lease in due:
                    self._messages[id(message)] = (message, lease, now + lease / 3)
                if not due:
                    next_at = min(at for _, _, at in self._messages.values())
                    self._wake.wait(max(0.01, next_at - now))
                    continue
            for message, lease in due:
                try:
                    self._backend.extend_visibility(message, lease)
                except Exception:
                    logger.warning(
                        "could not extend the visibility of message %s",
                        message.message_id,
                        exc_info=True,
                    )

    def close(self) -> None:
        """Stop the background thread."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
