"""Publishing into the user's database transaction.

:class:`Outbox` serializes a message exactly as :class:`~melange.publishers.QueuePublisher`
and :class:`~melange.publishers.TopicPublisher` do (same serializers, same headers, the
causation and correlation ids of the message being processed) and inserts it into the outbox
table through the caller's connection, inside the transaction the caller has open. Nothing is
sent here: the row becomes visible, and the :class:`~melange.outbox.relay.Relay` sends it, when
that transaction commits; a rollback removes it with the rest of the transaction's writes::

    outbox = Outbox(JsonSerializer())

    with psycopg.connect(dsn) as conn:  # one transaction, committed on exit
        conn.execute("INSERT INTO orders (id) VALUES (%s)", (42,))
        outbox.publish(conn, "orders", {"order_id": 42})

The connection is a ``sqlite3`` connection, a psycopg 3 connection or a SQLAlchemy
``Session``/``Connection`` on the database that holds the outbox table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from melange.exceptions import ConfigurationError
from melange.models import Message
from melange.outbox.connections import BoundConnection, bind
from melange.outbox.schema import (
    DEFAULT_TABLE,
    QUEUE,
    TOPIC,
    check_table_name,
    create_statements,
    insert_statement,
    row_values,
)
from melange.publishers import _coerce_serializers, build_message
from melange.serializers.registry import SerializerSource


class Outbox:
    """Writes messages to the outbox table in the caller's transaction.

    Args:
        serializer_registry: A serializer, a list of serializers or a
            :class:`~melange.serializers.registry.SerializerRegistry`, as for the publishers.
            Defaults to JSON.
        table: The outbox table (the relay must be given the same name).
        clock: Wall clock in Unix seconds (tests pass a fake one).

    Thread-safe; holds no connection of its own.
    """

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        *,
        table: str = DEFAULT_TABLE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.serializer_registry = _coerce_serializers(serializer_registry)
        self.table = check_table_name(table)
        self._insert = insert_statement(self.table)
        self._clock = clock

    def create_table(self, connection: Any) -> None:
        """Create the outbox table (and on PostgreSQL its notify trigger) if missing, in the
        transaction open on ``connection``; the caller commits. The relay does this too."""
        bound = bind(connection)
        for statement in create_statements(self.table, bound.dialect):
            bound.execute(statement)

    def publish(
        self,
        connection: Any,
        destination: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        topic: bool = False,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> Message:
        """Serialize ``data`` and write it to the outbox in ``connection``'s transaction, for
        the queue ``destination`` (the topic, with ``topic=True``). Returns the envelope the
        relay will send once the transaction commits.

        The other arguments are those of :meth:`melange.publishers.QueuePublisher.publish`.
        A ``delay_seconds`` is handed to the backend when the relay sends the message (so it
        counts from then); the relay's backend must support it.

        Raises:
            SerializationError: ``data`` could not be serialized.
            ConfigurationError: ``connection`` is not a supported connection, or a negative
                delay.
            Exception: whatever the driver raises for the insert (no table, closed
                connection...); the transaction is the caller's to roll back.
        """
        return self._write_new(
            bind(connection),
            TOPIC if topic else QUEUE,
            destination,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
            delay_seconds,
        )

    def publish_to_topic(
        self, connection: Any, topic_name: str, data: Any, **kwargs: Any
    ) -> Message:
        """:meth:`publish` to the topic ``topic_name``."""
        return self.publish(connection, topic_name, data, topic=True, **kwargs)

    def queue_publisher(self, connection: Any) -> OutboxQueuePublisher:
        """A publisher with :class:`~melange.publishers.QueuePublisher`'s methods, writing to
        the outbox in ``connection``'s transaction."""
        return OutboxQueuePublisher(self, connection)

    def topic_publisher(self, connection: Any) -> OutboxTopicPublisher:
        """A publisher with :class:`~melange.publishers.TopicPublisher`'s methods, writing to
        the outbox in ``connection``'s transaction."""
        return OutboxTopicPublisher(self, connection)

    # -- building and writing -----------------------------------------------------------------

    def build(
        self,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Message:
        """The envelope a publisher would send for ``data`` (the same header rules)."""
        if problem := _header_problem(headers):
            raise ConfigurationError(problem)
        return build_message(
            self.serializer_registry,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
        )

    def _write_new(
        self,
        connection: BoundConnection,
        kind: str,
        destination: str,
        data: Any,
        message_group_id: str | None,
        message_deduplication_id: str | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        delay_seconds: float | None,
    ) -> Message:
        """Build the envelope for ``data`` and insert it for ``destination`` (a negative
        delay is refused first); returns the envelope."""
        if delay_seconds is not None and delay_seconds < 0:
            raise ConfigurationError(f"delay_seconds must be >= 0, got {delay_seconds!r}")
        message = self.build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        self.write(connection, message, kind, destination, delay_seconds)
        return message

    def write(
        self,
        connection: BoundConnection,
        message: Message,
        kind: str,
        destination: str,
        delay_seconds: float | None = None,
    ) -> None:
        """Insert the built ``message`` for ``destination`` (``kind`` ``"queue"`` or
        ``"topic"``) through the bound ``connection``."""
        if not isinstance(destination, str) or not destination:
            raise ConfigurationError(f"destination must be a non-empty str, got {destination!r}")
        connection.execute(
            self._insert, row_values(message, kind, destination, delay_seconds, self._clock())
        )

    def __repr__(self) -> str:
        return f"Outbox(table={self.table!r})"


def _header_problem(headers: Mapping[str, str] | None) -> str | None:
    if not headers:
        return None
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return f"headers are str to str, got {name!r}: {value!r}"
    return None


class _BoundPublisher:
    #: What the destinations are: ``"queue"`` or ``"topic"``.
    _kind = QUEUE

    def __init__(self, outbox: Outbox, connection: Any) -> None:
        self.outbox = outbox
        self._bound = bind(connection)

    def publish_batch(
        self,
        destination: str,
        items: Iterable[Any],
        message_group_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> list[Message]:
        """Write several messages for ``destination``; the relay sends them in batches."""
        messages = [self.outbox.build(item, message_group_id, None, headers) for item in items]
        for message in messages:
            self.outbox.write(self._bound, message, self._kind, destination)
        return messages


class OutboxQueuePublisher(_BoundPublisher):
    """:class:`~melange.publishers.QueuePublisher`'s interface on the outbox of one
    connection's transaction (from :meth:`Outbox.queue_publisher`)."""

    def publish(
        self,
        queue_name: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> Message:
        """Write ``data`` for ``queue_name``; see :meth:`Outbox.publish`."""
        return self.outbox._write_new(
            self._bound,
            self._kind,
            queue_name,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
            delay_seconds,
        )


class OutboxTopicPublisher(_BoundPublisher):
    """:class:`~melange.publishers.TopicPublisher`'s interface on the outbox of one
    connection's transaction (from :meth:`Outbox.topic_publisher`)."""

    _kind = TOPIC

    def publish(
        self,
        topic_name: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> Message:
        """Write ``data`` for ``topic_name``; see :meth:`Outbox.publish`."""
        return self.outbox._write_new(
            self._bound,
            self._kind,
            topic_name,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
            delay_seconds,
        )


__all__ = ["Outbox", "OutboxQueuePublisher", "OutboxTopicPublisher"]
