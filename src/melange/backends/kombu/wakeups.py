"""How the waiting receives of a :class:`~melange.backends.kombu.KombuBackend` are woken.

A receive polling a virtual transport sleeps on a condition that a publish by the same
backend rings; one waiting on the AMQP socket also watches one end of a socket pair, which
:meth:`Wakeups.interrupt` writes to; one waiting on an event loop registers a waiter, called
from whichever thread read a delivery or a confirm for it, or interrupted the waits.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class Wakeups:
    """What ends the waits of one backend's receives: its publishes and its interrupts."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._waiting = 0  # receives waiting on ``_wake`` (a publish wakes them)
        self._interrupts = 0
        #: Wakes a receive waiting on the AMQP socket (see :meth:`interrupt`).
        self.waker: tuple[socket.socket, socket.socket] | None = None
        #: Called, from any thread, when a delivery is pushed or a wait is interrupted: how
        #: receives waiting on an event loop learn of deliveries another thread read.
        self.waiters: set[Callable[[], None]] = set()

    @property
    def interrupts(self) -> int:
        """How many times the waits were interrupted (read without the lock: a wait that
        started at one count ends when it changes)."""
        return self._interrupts

    def mark(self) -> int:
        """The interrupt count a wait starts at (read under the lock)."""
        with self._wake:
            return self._interrupts

    def wait(self, seconds: float, interrupts: int) -> bool:
        """Sleep until a publish rings, the waits are interrupted or ``seconds`` pass;
        ``False`` when interrupted since the count ``interrupts``."""
        with self._wake:
            if self._interrupts != interrupts:
                return False
            self._waiting += 1
            try:
                self._wake.wait(seconds)
            finally:
                self._waiting -= 1
            return self._interrupts == interrupts

    def ring(self) -> None:
        """Wake this backend's waiting receives (a publish may be for them)."""
        # Read without the lock: a receive not counted yet misses this ring, as one not yet
        # waiting always did, and waits no longer than its pause.
        if self._waiting:
            with self._wake:
                self._wake.notify_all()

    def interrupt(self) -> None:
        """End every wait: on the condition, on the AMQP socket and on event loops."""
        with self._wake:
            self._interrupts += 1
            self._wake.notify_all()
        if self.waker is not None:
            with contextlib.suppress(OSError):
                self.waker[1].send(b"\0")
        if self.waiters:
            self.call_waiters()

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        """The socket pair of :attr:`waker`: a wait on a socket watches the first."""
        with self._wake:  # made once, whichever thread asks first
            if self.waker is None:
                reader, writer = socket.socketpair()
                reader.setblocking(False)
                writer.setblocking(False)
                self.waker = (reader, writer)
            return self.waker

    def call_waiters(self) -> None:
        """Call every registered waiter (see :meth:`add_waiter`)."""
        for waiter in list(self.waiters):
            waiter()

    def add_waiter(self, waiter: Callable[[], None]) -> None:
        """Have ``waiter`` called, from any thread, when a delivery is pushed or waits are
        interrupted, until :meth:`remove_waiter` (for
        :class:`~melange.backends.kombu.AsyncKombuBackend`)."""
        self.waiters.add(waiter)

    def remove_waiter(self, waiter: Callable[[], None]) -> None:
        """Stop calling ``waiter``."""
        self.waiters.discard(waiter)

    def close(self) -> None:
        """Close the socket pair, if it was made."""
        if self.waker is not None:
            for end in self.waker:
                end.close()


__all__ = ["Wakeups"]
