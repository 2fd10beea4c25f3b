"""Giving the memory of a drained backlog back to the operating system.

Python frees the objects of consumed messages, but the C allocator under it (glibc's malloc)
keeps the freed pages of its heap for reuse: after a backlog of a million messages drains, a
process stays 40% (in memory) to 90% (SQLite) above its size before the backlog.
:func:`return_freed_memory` asks the allocator to give those pages back. The in-memory
backend calls it when a receive finds empty a queue that held many messages
(:data:`LARGE_BACKLOG`); the SQLite backend, which does not know how much a queue held, calls
:func:`return_freed_memory_when_idle` when a queue it delivered from is found empty. Both are
no-ops where the C library has no ``malloc_trim`` (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from functools import cache

#: A queue that held at least this many messages gives its memory back once empty.
LARGE_BACKLOG = 100_000

#: Seconds between two calls of :func:`return_freed_memory_when_idle` that do something.
IDLE_RETURN_INTERVAL = 30.0

_idle_lock = threading.Lock()
_last_idle_return: float | None = None


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def return_freed_memory() -> bool:
    """Ask the C allocator to return its free pages to the system; whether it could be
    asked. Takes a few milliseconds on a large heap: call it rarely, with no lock held."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def return_freed_memory_when_idle(now: float | None = None) -> bool:
    """:func:`return_freed_memory`, at most once every :data:`IDLE_RETURN_INTERVAL` seconds
    in the process (queues going idle often must not make it a cost); whether it ran."""
    global _last_idle_return
    now = time.monotonic() if now is None else now
    with _idle_lock:
        if _last_idle_return is not None and now - _last_idle_return < IDLE_RETURN_INTERVAL:
            return False
        _last_idle_return = now
    return return_freed_memory()
