"""A clock a test can move forward: :class:`FakeClock`.

Give it to the in-memory backend (``InMemoryMessagingBackend(clock=clock)``) and delays,
retry backoffs and visibility timeouts are counted on it: :meth:`FakeClock.advance` makes
them run out at once, so a test of a three-attempt backoff takes milliseconds.

The clock runs at the speed of real time (``time.monotonic()``) plus the time it was advanced
by, so a dispatcher consuming on a thread of its own still sees delays run out by themselves:
nothing ever waits for a clock that does not move.
"""

from __future__ import annotations

import threading
import time


class FakeClock:
    """Monotonic time in seconds that :meth:`advance` moves forward; call it to read it."""

    __slots__ = ("_lock", "_offset")

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    def __repr__(self) -> str:
        return f"<FakeClock advanced by {self._offset:.3f}s>"

    @property
    def advanced(self) -> float:
        """Seconds this clock was moved ahead of real time in all."""
        return self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (never backward: it stays monotonic)."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds} seconds")
        with self._lock:
            self._offset += seconds

    def advance_to(self, instant: float) -> None:
        """Move the clock forward until it reads at least ``instant`` (nothing if it does)."""
        with self._lock:
            behind = instant - (time.monotonic() + self._offset)
            if behind > 0:
                self._offset += behind


__all__ = ["FakeClock"]
