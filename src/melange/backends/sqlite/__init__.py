"""An embedded, durable broker in one SQLite file.

:class:`SQLiteBackend` keeps queues, topics, subscriptions and messages in a single database
file, using nothing but the standard library. Several processes on one machine may publish to
and consume from the same file at once: a message is claimed inside a ``BEGIN IMMEDIATE``
transaction together with a lease (its visibility timeout), so no two consumers hold it at the
same time, and a consumer that dies simply lets its lease run out, after which the message is
delivered again. It offers the same semantics as the in-memory reference backend: topics with
manifest filters, visibility timeouts and receive counts, dead-letter queues (by the broker
after ``max_receive_count`` deliveries, and on request), delayed delivery, FIFO queues
(names ending in ``.fifo``) ordered per message group, with deduplication ids.

Durability: the database runs in WAL mode. With the default ``synchronous="NORMAL"`` a
committed publish or acknowledgement survives the crash of any process, but a power cut or
an operating-system crash may lose the last transactions committed before it (the database
itself stays consistent). ``synchronous="FULL"`` syncs the log on every commit and closes that
window at a large cost in throughput.

The file is meant for one machine: SQLite's locking is not reliable on network file systems.

The package:

- :mod:`~melange.backends.sqlite.backend`: :class:`SQLiteBackend` itself: publishing,
  receiving with leases, settling, lifecycle.
- :mod:`~melange.backends.sqlite.connection`: the database file: opening it, pragmas, the
  schema (its tables are described there) and migrations, the pool of connections and
  transactions, the doorbell that wakes receivers, fork handling.
- :mod:`~melange.backends.sqlite.topology`: queues, topics and subscriptions (their rows and
  the validation of queue options).
- :mod:`~melange.backends.sqlite.wire`: messages as rows and back, and the row-level steps of
  storing (FIFO deduplication), FIFO ordering and dead-lettering.
- :mod:`~melange.backends.sqlite.inspect`: :class:`QueueStats`, peeking and purging (the CLI
  and tests).
"""

from melange.backends.embedded_rules import DEDUPLICATION_WINDOW_SECONDS
from melange.backends.sqlite.backend import SQLiteBackend
from melange.backends.sqlite.connection import SCHEMA_VERSION, SYNCHRONOUS_MODES
from melange.backends.sqlite.inspect import QueueStats

__all__ = [
    "DEDUPLICATION_WINDOW_SECONDS",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_MODES",
    "QueueStats",
    "SQLiteBackend",
]
