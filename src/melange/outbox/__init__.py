"""The transactional outbox and inbox: publish in the database transaction that changes the
data, and process each message once in the transaction that handles it.

* :class:`Outbox` writes messages to an outbox table through the caller's connection (SQLite,
  PostgreSQL with psycopg 3, or a SQLAlchemy session), so they exist if and only if the
  caller's transaction commits.
* :class:`Relay` sends committed rows to any backend, in order per message group, at least
  once, in batches; run it with ``melange relay`` or in a process of your own.
* :class:`Inbox` runs a consumer's handler in the user's transaction together with the record
  that the message was processed, so a redelivery is skipped and what the handler publishes
  through the outbox is sent once.

See :doc:`/outbox`.
"""

from melange.outbox.inbox import Inbox, InboxConsumer, InboxStats, UnitOfWork
from melange.outbox.relay import Relay, RelayStats
from melange.outbox.schema import DEFAULT_TABLE, ORIGINAL_ID_HEADER
from melange.outbox.writer import Outbox, OutboxQueuePublisher, OutboxTopicPublisher

__all__ = [
    "DEFAULT_TABLE",
    "ORIGINAL_ID_HEADER",
    "Inbox",
    "InboxConsumer",
    "InboxStats",
    "Outbox",
    "OutboxQueuePublisher",
    "OutboxTopicPublisher",
    "Relay",
    "RelayStats",
    "UnitOfWork",
]
