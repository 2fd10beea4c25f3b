"""The inbox: a consumer's handler, its database writes and the "processed" record in one
transaction.

For each message, :class:`Inbox` opens a transaction on the user's database, records the
message as processed for the consumer (in the table of a
:class:`~melange.deduplication.sql_cache.SQLDeduplicationCache`, under the same key the
dispatcher's deduplication uses), runs the handler with a :class:`UnitOfWork` on that
transaction, and commits. So:

* the handler's writes and the record commit together or not at all;
* a redelivered message (the process died after the commit, before the broker heard of it)
  finds the record and is skipped;
* what the handler publishes through :meth:`UnitOfWork.publish` goes to the outbox of the same
  transaction, and the :class:`~melange.outbox.relay.Relay` sends it once committed.

Consume, write, publish: each effect once, whatever crashes in between::

    inbox = Inbox(lambda: psycopg.connect(dsn), SQLDeduplicationCache(dsn), outbox=Outbox())

    @inbox.consumer(name="payments")
    def on_order(event: dict, uow: UnitOfWork) -> None:
        uow.connection.execute("INSERT INTO payments (order_id) VALUES (%s)", (event["id"],))
        uow.publish_to_topic("payments", {"order_id": event["id"], "paid": True})

    dispatcher.attach_consumer(on_order)

The record is the first statement of the transaction: a second delivery of the same message
processed at the same moment waits for the first transaction and is skipped if it committed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from melange.consumers import Consumer
from melange.context import current_message
from melange.deduplication.sql_cache import SQLDeduplicationCache, deduplication_key
from melange.exceptions import ConfigurationError
from melange.models import Message
from melange.outbox.connections import BoundConnection, bind
from melange.outbox.schema import ORIGINAL_ID_HEADER
from melange.outbox.writer import Outbox, OutboxQueuePublisher, OutboxTopicPublisher

logger = logging.getLogger("melange.outbox")

T = TypeVar("T")


@dataclass(slots=True)
class InboxStats:
    """Messages an inbox processed, and redeliveries it skipped."""

    processed: int = 0
    skipped: int = 0


class UnitOfWork:
    """What a handler run by an :class:`Inbox` works with: the open transaction and the
    message in hand.

    Attributes:
        connection: The user's connection (or SQLAlchemy session) with the transaction open;
            write with it, never commit or roll back (the inbox does).
        message: The envelope of the message being processed.
    """

    __slots__ = ("_bound", "_outbox", "connection", "message")

    def __init__(
        self, connection: Any, bound: BoundConnection, message: Message, outbox: Outbox | None
    ) -> None:
        self.connection = connection
        self.message = message
        self._bound = bound
        self._outbox = outbox

    def _require_outbox(self) -> Outbox:
        if self._outbox is None:
            raise ConfigurationError("this Inbox has no outbox: pass Inbox(..., outbox=Outbox())")
        return self._outbox

    def publish(self, queue_name: str, data: Any, **kwargs: Any) -> Message:
        """Write ``data`` for ``queue_name`` to the outbox of this transaction (the arguments
        of :meth:`melange.publishers.QueuePublisher.publish`)."""
        return self.queue_publisher().publish(queue_name, data, **kwargs)

    def publish_to_topic(self, topic_name: str, data: Any, **kwargs: Any) -> Message:
        """Write ``data`` for ``topic_name`` to the outbox of this transaction."""
        return self.topic_publisher().publish(topic_name, data, **kwargs)

    def queue_publisher(self) -> OutboxQueuePublisher:
        """A queue publisher on the outbox of this transaction."""
        return self._require_outbox().queue_publisher(self._bound)

    def topic_publisher(self) -> OutboxTopicPublisher:
        """A topic publisher on the outbox of this transaction."""
        return self._require_outbox().topic_publisher(self._bound)


class Inbox:
    """Runs handlers in the user's transaction, once per message and consumer.

    Args:
        connect: Opens a connection to the database: a ``sqlite3`` or psycopg 3 connection
            (kept and reused by the calling thread, replaced after an error), or a SQLAlchemy
            ``Session`` (a ``sessionmaker``; closed after each message).
        cache: Where messages are recorded as processed: its table, key rules and memory
            (``expire``). It must be on the same database as ``connect``.
        outbox: The outbox that :meth:`UnitOfWork.publish` writes to.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        cache: SQLDeduplicationCache,
        *,
        outbox: Outbox | None = None,
    ) -> None:
        if not isinstance(cache, SQLDeduplicationCache):
            raise ConfigurationError(
                f"the inbox records messages in a SQLDeduplicationCache, got {cache!r}"
            )
        self._connect = connect
        self.cache = cache
        self.outbox = outbox
        self.stats = InboxStats()
        self._local = threading.local()
        self._stats_lock = threading.Lock()

    # -- the unit of work -----------------------------------------------------------------------

    def key(self, consumer: Consumer | str, message: Message) -> str:
        """The record's key: the consumer's name and the id the publisher gave the message
        (kept in a header by the relay where the backend replaces the id, as SQS does)."""
        return deduplication_key(consumer, message.headers.get(ORIGINAL_ID_HEADER) or message)

    def run(
        self, consumer: Consumer | str, message: Message, handler: Callable[[UnitOfWork], T]
    ) -> T | None:
        """Process ``message`` for ``consumer`` with ``handler`` in one transaction; returns
        what the handler returned, or ``None`` when the message was already processed.

        An exception from the handler (or the commit) rolls everything back and is raised:
        the dispatcher then retries the message as usual.
        """
        key = self.key(consumer, message)
        with self._transaction() as (connection, bound, raw):
            if bound.dialect != self.cache.dialect:
                raise ConfigurationError(
                    f"the inbox's connection is on {bound.dialect} but its cache on "
                    f"{self.cache.dialect}: both must be the same database"
                )
            if not self.cache.record_done_in(raw, key):
                logger.info("inbox: %s already processed; skipped", key)
                with self._stats_lock:
                    self.stats.skipped += 1
                return None
            result = handler(UnitOfWork(connection, bound, message, self.outbox))
        with self._stats_lock:
            self.stats.processed += 1
        return result

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[tuple[Any, BoundConnection, Any]]:
        connection = getattr(self._local, "connection", None)
        fresh = connection is None
        if fresh:
            connection = self._connect()
        # A SQLAlchemy Session is closed after each message (its engine pools connections).
        reusable = not hasattr(connection, "get_bind")
        try:
            with _begin(connection) as raw:
                # Bound once the transaction is open (a Session begins on first use).
                yield connection, bind(connection), raw
        except BaseException:
            # The connection may be broken (the database went away): start afresh next time.
            self._local.connection = None
            with contextlib.suppress(Exception):
                _close(connection)
            raise
        if reusable:
            self._local.connection = connection
        else:
            _close(connection)

    def close(self) -> None:
        """Close the calling thread's connection."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            _close(connection)

    # -- consumers ------------------------------------------------------------------------------

    def consumer(
        self,
        handler: Callable[[Any, UnitOfWork], Any] | None = None,
        *,
        name: str | None = None,
        accepts: Callable[[Any], bool] | None = None,
    ) -> Any:
        """A :class:`~melange.consumers.Consumer` running ``handler(message, uow)`` in the
        inbox; usable as ``@inbox.consumer`` or ``@inbox.consumer(name=...)``. Give a
        ``name``: it is the record's key prefix, which must outlive code moves."""

        def build(func: Callable[[Any, UnitOfWork], Any]) -> InboxConsumer:
            return InboxConsumer(self, func, name=name, accepts=accepts)

        return build(handler) if handler is not None else build

    def handler(self, method: Callable[..., T]) -> Callable[..., T | None]:
        """Decorate a consumer's method ``(self, message, uow)`` so that it runs in the inbox,
        keyed by the consumer's ``name``."""

        @functools.wraps(method)
        def run(owner: Consumer, message: Any, **kwargs: Any) -> T | None:
            envelope = _envelope()
            return self.run(owner, envelope, lambda uow: method(owner, message, uow, **kwargs))

        return run


class InboxConsumer(Consumer):
    """A consumer whose handler runs in an :class:`Inbox` (from :meth:`Inbox.consumer`)."""

    def __init__(
        self,
        inbox: Inbox,
        handler: Callable[[Any, UnitOfWork], Any],
        *,
        name: str | None = None,
        accepts: Callable[[Any], bool] | None = None,
    ) -> None:
        # The handler names the consumer by default (process() is overridden, so it is not
        # called as ``on_message``).
        super().__init__(cast(Callable[[Any], Any], handler), accepts, name=name)
        self.inbox = inbox
        self._handler = handler

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Run the handler on ``message`` in the inbox (skipped if already processed)."""
        return self.inbox.run(self, _envelope(), lambda uow: self._handler(message, uow))


def _envelope() -> Message:
    envelope = current_message()
    if envelope is None:
        raise RuntimeError(
            "an inbox handler runs while a dispatcher processes a message; call Inbox.run() "
            "with the message elsewhere"
        )
    return envelope


def _is_session(connection: object) -> bool:
    return any(cls.__module__.startswith("sqlalchemy.") for cls in type(connection).__mro__)


@contextlib.contextmanager
def _begin(connection: Any) -> Iterator[Any]:
    """A transaction on ``connection``, committed at the end of the block, rolled back on an
    exception; yields the DB-API connection the cache records through."""
    if isinstance(connection, sqlite3.Connection):
        if connection.in_transaction:
            raise ConfigurationError("the inbox's SQLite connection has a transaction open")
        # IMMEDIATE: take the write lock now, so the record (a write) cannot fail later on a
        # lock another writer took first.
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
    elif _is_session(connection):
        with connection.begin():
            # A Session's connection of this transaction, or the Connection itself.
            sa_connection = (
                connection.connection() if hasattr(connection, "get_bind") else connection
            )
            yield sa_connection.connection.dbapi_connection
    else:  # psycopg 3
        with connection.transaction():
            yield connection


def _close(connection: Any) -> None:
    close = getattr(connection, "close", None)
    if callable(close):
        close()


__all__ = ["Inbox", "InboxConsumer", "InboxStats", "UnitOfWork"]
