"""Probes: wait in a test until something asynchronous has happened.

A probe samples some state and says whether it is satisfied; :meth:`Probe.wait` polls it until
it is, or fails after a timeout::

    class StateProbe(Probe):
        def __init__(self, state): self.state = state
        def sample(self): pass
        def can_be_measured(self): return self.state.value_set is not None

    StateProbe(state).wait()

For one-off conditions, :func:`wait_until` takes a predicate.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable


class ProbeTimeoutError(AssertionError):
    """A probe was not satisfied in time (an ``AssertionError``, so test runners report it)."""


class Probe(ABC):
    """Polls the environment until a condition holds.

    Subclasses implement :meth:`can_be_measured` (and optionally :meth:`sample`, which takes a
    fresh reading before each check when ``can_be_measured`` does not).
    """

    #: Seconds :meth:`wait` polls before giving up.
    timeout: float = 10.0
    #: Seconds between two checks.
    interval: float = 0.01

    def sample(self) -> None:
        """Take a fresh reading of the state under test (default: nothing to do)."""

    @abstractmethod
    def can_be_measured(self) -> bool:
        """Whether the condition holds now."""

    def describe(self) -> str:
        """What the probe waits for, for the timeout message."""
        return type(self).__name__

    def wait(self, timeout: float | None = None) -> None:
        """Poll until :meth:`can_be_measured` is true; raise ``ProbeTimeoutError`` otherwise."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self.sample()
            if self.can_be_measured():
                return
            if time.monotonic() >= deadline:
                raise ProbeTimeoutError(f"{self.describe()} not satisfied within {limit}s")
            time.sleep(self.interval)


class PredicateProbe(Probe):
    """A probe built from a predicate."""

    def __init__(self, predicate: Callable[[], bool], description: str | None = None) -> None:
        self._predicate = predicate
        self._description = description or str(getattr(predicate, "__qualname__", "condition"))

    def can_be_measured(self) -> bool:
        return bool(self._predicate())

    def describe(self) -> str:
        return self._description


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, description: str | None = None
) -> None:
    """Poll ``predicate`` until it returns true; raise ``ProbeTimeoutError`` after ``timeout``."""
    PredicateProbe(predicate, description).wait(timeout)
