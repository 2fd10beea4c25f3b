"""The NATS JetStream backends (need the ``nats`` extra: ``pip install 'melange[nats]'``).

:class:`NATSBackend` (blocking) and :class:`AsyncNATSBackend` (asyncio) are one backend on
nats-py: the blocking one runs the asyncio client on an event loop thread of its own. The
names below are imported on first use: importing this package does not need nats-py.

- :mod:`melange.backends.nats.async_backend`: :class:`AsyncNATSBackend`: publishing with
  JetStream acknowledgements, pull consumers, leases, retries and dead letters.
- :mod:`melange.backends.nats.backend`: :class:`NATSBackend`, the same for blocking code.
- :mod:`melange.backends.nats.topology`: how queues and topics map onto streams, subjects,
  stream sources and the durable consumer, and what the backend can do.
- :mod:`melange.backends.nats.wire`: the message format (headers and payload).
- :mod:`melange.backends.nats.connection`: server URLs and connection options.
- :mod:`melange.backends.nats.session`: the connection itself: reconnecting, repeating
  operations, the backend's inbox.
- :mod:`melange.backends.nats.streams`: declaring, finding and deleting streams and consumers.
- :mod:`melange.backends.nats.publishing`: publishing and JetStream's acknowledgements.
- :mod:`melange.backends.nats.pulls`: pull requests, pull markers and interrupts.
- :mod:`melange.backends.nats.receiver`: receiving: what a pull brings, and late deliveries.
- :mod:`melange.backends.nats.receipts`: receipts, leases and settling.
- :mod:`melange.backends.nats.dead_letters`: moving messages to dead-letter queues.
- :mod:`melange.backends.nats.inspect`: queue statistics, peeks and purges (the CLI).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melange.backends.nats.async_backend import AsyncNATSBackend
    from melange.backends.nats.backend import NATSBackend

_LAZY = {
    "AsyncNATSBackend": "melange.backends.nats.async_backend",
    "NATSBackend": "melange.backends.nats.backend",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["AsyncNATSBackend", "NATSBackend"]
