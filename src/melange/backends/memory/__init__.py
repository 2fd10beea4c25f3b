"""An in-memory backend with the semantics of a real broker.

Queues hold messages until they are acknowledged. A received message is invisible to other
receivers for the queue's visibility timeout; if it is not settled by then, or is nacked, it
is delivered again. ``attempt`` counts failed attempts (nacks) plus one; after
``max_receive_count`` deliveries (default 20, a backstop for messages whose handlers never
settle them) a queue with a dead-letter queue moves the message there, as SQS does. Names
ending in ``.fifo`` (or queues declared with ``fifo=True``) deliver each message group strictly
in order.

Everything lives in one process and is lost when it exits; use it in tests and for local
development, and :mod:`melange.backends.sqlite` where messages must survive a restart.

The package:

- :mod:`~melange.backends.memory.backend`: :class:`InMemoryMessagingBackend` itself:
  declaring, publishing, receiving with leases, settling, synchronous listeners.
- :mod:`~melange.backends.memory.topology`: the state it keeps (queues with their messages,
  subscriptions, receipts) and the steps that change a queue's messages.
"""

from melange.backends.memory.backend import InMemoryMessagingBackend

__all__ = ["InMemoryMessagingBackend"]
