"""The counters a dispatcher keeps."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class DispatcherStats:
    """Counters a dispatcher keeps; read them any time (e.g. to export as metrics).

    Every received message is settled exactly one way, so once none is in hand
    ``received == acknowledged + retried + dead_lettered + released + unsettled``.
    ``released`` counts messages given back without running a handler (on stop, while
    another process holds the deduplication claim or the cache is down, or after their
    connection was lost);
    ``retried`` includes messages that should have been dead-lettered but whose queue has
    none; ``unsettled`` counts messages whose settling call failed (the broker delivers them
    again). ``poison`` (a subset of ``dead_lettered``), ``duplicates_skipped`` (of
    ``acknowledged``) and ``consumer_failures`` (per consumer call) are details.
    """

    received: int = 0
    acknowledged: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    unsettled: int = 0
    poison: int = 0
    duplicates_skipped: int = 0
    consumer_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._lock:
            return {
                k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, int)
            }


__all__ = ["DispatcherStats"]
