"""Keeps the messages in hand invisible to other consumers while handlers run long."""

from __future__ import annotations

import logging
import threading

from melange.backends.interfaces import MessagingBackend
from melange.models import Message

logger = logging.getLogger("melange.dispatcher")


class Heartbeat:
    """Extends the visibility of registered messages every ``interval`` seconds.

    A background thread runs while messages are registered, and ends when none are left or
    on :meth:`close`.
    """

    def __init__(self, backend: MessagingBackend, extension: float) -> None:
        self._backend = backend
        self._extension = extension
        self._interval = max(0.05, extension / 3)
        self._lock = threading.Lock()
        self._messages: dict[int, Message] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, message: Message) -> None:
        with self._lock:
            self._messages[id(message)] = message
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="melange-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, message: Message) -> None:
        with self._lock:
            self._messages.pop(id(message), None)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                messages = list(self._messages.values())
                if not messages:
                    # Idle: end the thread; the next add() starts a new one.
                    self._thread = None
                    return
            for message in messages:
                try:
                    self._backend.extend_visibility(message, self._extension)
                except Exception:
                    logger.warning(
                        "could not extend the visibility of message %s",
                        message.message_id,
                        exc_info=True,
                    )

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
