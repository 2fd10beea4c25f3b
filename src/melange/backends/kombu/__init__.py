"""The kombu backends (need kombu: ``pip install 'melange[kombu]'``).

:class:`KombuBackend` adapts any kombu transport through one adapter; it is tested on kombu's
Redis transport (``kombu+redis://host:6379/0``) and its AMQP transport
(``kombu+amqp://user:password@host:5672/vhost``). kombu has no asyncio API:
:class:`AsyncKombuBackend` runs the blocking backend on a bounded pool of threads of its own.
What the failure policy can do depends on the transport: see
:func:`~melange.backends.kombu.topology.capabilities`.

- :mod:`~melange.backends.kombu.backend`: the blocking backend: topology, publishing,
  receiving, settling, retries, dead letters, delegating to the modules below.
- :mod:`~melange.backends.kombu.async_backend`: the asyncio backend.
- :mod:`~melange.backends.kombu.connection`: URLs, transport options, and the connection
  with its receiving and publishing channels, its lock and its reconnections.
- :mod:`~melange.backends.kombu.topology`: how queues, topics and dead-letter queues map onto
  kombu and are declared and bound, option checks, capabilities per transport.
- :mod:`~melange.backends.kombu.confirms`: publishing, and the broker's publisher confirms.
- :mod:`~melange.backends.kombu.consuming`: the AMQP consumers, waits on the socket,
  heartbeats.
- :mod:`~melange.backends.kombu.leases`: ``basic_get``, leases on Redis, delayed give-backs.
- :mod:`~melange.backends.kombu.wakeups`: what ends a waiting receive.
- :mod:`~melange.backends.kombu.wire`: messages as kombu messages, and receipts.
- :mod:`~melange.backends.kombu.inspect`: listing, counting, peeking and purging (RabbitMQ's
  management API for the AMQP transport).
"""

try:
    import kombu  # noqa: F401 - checked here so every module of the package reports it clearly
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the kombu backend needs kombu ({exc}): pip install 'melange[kombu]'"
    ) from exc

from melange.backends.kombu.async_backend import AsyncKombuBackend
from melange.backends.kombu.backend import DEFAULT_URL, KombuBackend

__all__ = ["DEFAULT_URL", "AsyncKombuBackend", "KombuBackend"]
