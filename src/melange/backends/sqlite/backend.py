""":class:`SQLiteBackend`: publishing, receiving and settling messages in an SQLite file.

The backend delegates the database file (connections, schema, transactions, the doorbell) to
:mod:`~melange.backends.sqlite.connection`, queues and topics to
:mod:`~melange.backends.sqlite.topology`, the row format of messages to
:mod:`~melange.backends.sqlite.wire` and inspection to :mod:`~melange.backends.sqlite.inspect`.
What it does itself: storing published messages (FIFO deduplication included), claiming them
with a lease, and settling them (acknowledge, nack, release, dead-letter, extend).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from melange.backends.gathering import BusyQueues
from melange.backends.heap import return_freed_memory_when_idle
from melange.backends.interfaces import (
    BackendCapabilities,
    MessagingBackend,
    QueueWatch,
)
from melange.backends.names import check_embedded_name
from melange.backends.numbers import check_number, check_optional_number
from melange.backends.publish_options import (
    apply_fifo_keywords,
    fifo_delay_refused,
    publish_delay,
)
from melange.backends.sqlite import inspect, topology
from melange.backends.sqlite.connection import SYNCHRONOUS_MODES, Database
from melange.backends.sqlite.inspect import QueueStats
from melange.backends.sqlite.topology import queue_config
from melange.backends.sqlite.wire import (
    COLUMNS,
    CORRUPT_HEADERS_HEADER,
    INSERT_INTO_STANDARD_QUEUE,
    Deduplication,
    Receipt,
    Row,
    dump_headers,
    enqueue,
    fifo_candidates,
    move_to_dead_letter_queue,
    row_problem,
    rows_by_id,
    to_message,
    whole_count,
)
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import FAILURE_REASON, Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")

logger = logging.getLogger("melange.backends.sqlite")


# Row ids per statement that names them in an ``IN`` list (SQLite caps parameters).
_IDS_PER_STATEMENT = 500


def _id_slices(ids: Sequence[int]) -> list[tuple[str, Sequence[int]]]:
    """``ids`` in slices, each with the ``?`` marks of its ``IN`` list.

    One statement over a sorted list of row ids runs once and moves from row to row (SQLite
    steps to the next row where it can), where a statement per row searches the table's
    B-tree from its root for each: a cost that grows with the depth of the tree, so with the
    number of messages the file holds.
    """
    ordered = sorted(ids)
    return [
        (",".join("?" * len(chunk)), chunk)
        for chunk in (
            ordered[start : start + _IDS_PER_STATEMENT]
            for start in range(0, len(ordered), _IDS_PER_STATEMENT)
        )
    ]


class SQLiteBackend(MessagingBackend):
    """A durable broker in an SQLite file, shared safely by the processes of one machine.

    The file is created (with its schema) on first use. ``":memory:"`` keeps everything in
    this process instead, through a single connection (handy in tests; not persistent).

    Args:
        path: The database file. Its directory must exist and be writable (SQLite keeps
            ``-wal`` and ``-shm`` files next to it).
        visibility_timeout: Default seconds a received message stays invisible to other
            consumers before it is delivered again (per queue: ``declare_queue(...,
            visibility_timeout=...)``). The dispatcher's heartbeat extends the lease while
            a handler runs, every third of this value: give queues consumed by long
            handlers a visibility timeout no shorter than it.
        synchronous: SQLite's ``synchronous`` setting: ``"NORMAL"`` (default) survives process
            crashes but may lose the last commits on power loss; ``"FULL"`` syncs every
            commit; ``"OFF"`` leaves syncing to the operating system.
        busy_timeout: Seconds to wait for another process's write transaction before failing.
        poll_interval: Seconds between a waiting receive's first checks for messages published
            by other processes. Publishes in this process wake only the receivers of the
            queues they reach, at once; messages becoming visible again (leases running out,
            delays) wake the receivers of their queue when due.
        max_poll_interval: While its queue stays empty a receive checks for other processes'
            publishes less and less often, doubling ``poll_interval`` up to this value: a
            message published by another process is seen within ``max_poll_interval``
            seconds (default 0.5) by an idle receiver, within ``poll_interval`` by a busy one.
        max_message_size: Largest body accepted, in bytes (``None``: no limit).
        clock: Wall clock in seconds since the epoch (shared by every process using the
            file); tests pass a fake one to step through timeouts.

    Raises:
        ConfigurationError: the file is not a Melange database, was written by a newer
            version, is read-only, or cannot be created.
    """

    loop_wait_seconds = 1.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        visibility_timeout: float = 30.0,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 0.5,
        max_message_size: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {list(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        check_number("visibility_timeout", visibility_timeout, positive=True)
        check_number("busy_timeout", busy_timeout, minimum=0)
        check_number("poll_interval", poll_interval, positive=True)
        check_number("max_poll_interval", max_poll_interval, positive=True)
        check_optional_number("max_message_size", max_message_size, minimum=1, integer=True)
        #: The database file as given.
        self.path = os.fspath(path)
        #: Default visibility timeout of new queues, in seconds (read by the heartbeat).
        self.visibility_timeout = float(visibility_timeout)
        self.synchronous = mode
        self._poll_interval = float(poll_interval)
        self._max_poll_interval = max(float(max_poll_interval), self._poll_interval)
        # Queue -> seconds the next idle wait of its receivers lasts at most (the backoff).
        self._idle_waits: dict[str, float] = {}
        # Queues this backend delivered from since each was last found empty.
        self._delivering: set[str] = set()
        # When each queue last delivered to a blocking receive (see retrieve_messages).
        self._busy = BusyQueues()
        self._max_message_size = max_message_size
        self._clock = clock
        self._interrupts = 0
        self._deduplication = Deduplication()
        # Queues whose last receive here returned messages.
        self._busy_queues: set[str] = set()
        self._db = Database(self.path, synchronous=mode, busy_timeout=float(busy_timeout))
        # An asyncio dispatcher tries each call on its loop first (see run_inline), unless
        # every commit waits for the disk (synchronous FULL or EXTRA).
        self.inline_when_free = mode in ("OFF", "NORMAL")

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            name="sqlite",
            persistent=not self._db.memory,
            fifo=True,
            topics=True,
            native_dead_letter=True,
            delayed_delivery=True,
            visibility_timeout=True,
            extend_visibility=True,
            receive_count=True,
            filter_policies=True,
            max_message_size=self._max_message_size,
            max_batch_size=None,
            delayed_publish=True,
            delayed_topic_publish=True,
            loop_wait=True,
        )

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    # -- topology (see melange.backends.sqlite.topology) ------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        check_embedded_name("topic", topic_name)
        return topology.declare_topic(self._db, topic_name, self._clock)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        return topology.get_topic(self._db, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        return topology.get_queue(self._db, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or update the queue, its dead-letter queue and its subscriptions.

        Options: ``fifo`` (default: the name ends in ``.fifo``), ``visibility_timeout``,
        ``delay_seconds`` (every new message waits this long), ``max_receive_count``
        (deliveries before the broker moves a message to the dead-letter queue, default 20),
        ``filter_events`` (manifests the subscriptions let through). Declaring again updates
        the options given and keeps the messages.
        """
        return topology.declare_queue(
            self._db,
            queue_name,
            topics_to_bind,
            dead_letter_queue_name,
            kwargs,
            self.visibility_timeout,
            self._clock,
        )

    def delete_queue(self, queue: QueueWrapper) -> None:
        topology.delete_queue(self._db, queue.name)

    def delete_topic(self, topic: TopicWrapper) -> None:
        topology.delete_topic(self._db, topic.name)

    # -- inspection (the CLI and tests; see melange.backends.sqlite.inspect) ----------------

    def queue_names(self) -> list[str]:
        """Names of every queue, sorted."""
        return topology.queue_names(self._db)

    def topic_names(self) -> list[str]:
        """Names of every topic, sorted."""
        return topology.topic_names(self._db)

    def subscriptions(self, topic_name: str) -> dict[str, list[str] | None]:
        """The queues subscribed to a topic, each with its manifest filter (``None``: all)."""
        return topology.subscriptions(self._db, topic_name)

    def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue holds: ready, in flight and delayed."""
        return inspect.queue_stats(self._db, queue_name, self._clock())

    def queue_depth(self, queue_name: str) -> int:
        """Messages in the queue, in flight or not."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue in publish order, without receiving them.

        The copies cannot be settled (their ``metadata`` is ``None``); ``attempt`` tells how
        many attempts at each failed so far (``None``: none).
        """
        return inspect.peek(self._db, queue_name, limit)

    def purge(self, queue_name: str) -> int:
        """Delete every message of the queue, in flight or not; returns how many."""
        return inspect.purge(self._db, queue_name)

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._check_sizes((message,))
        apply_fifo_keywords((message,), kwargs)
        if publish_delay(kwargs, backend="the SQLite backend") is not None:
            self.publish_batch_to_queue([message], queue, **kwargs)
            return
        row = (
            message.message_id,
            message.content,
            message.serializer_id,
            message.manifest,
            dump_headers(message.headers),
            message.group_id,
            message.deduplication_id,
            self._clock(),
            queue.name,
        )
        # A single message to a standard queue is one statement, a transaction of its own.
        # Anything else takes the general path.
        if self._db.execute(INSERT_INTO_STANDARD_QUEUE, row):
            self._db.doorbell.ring(queue.name)
        else:
            self.publish_batch_to_queue([message], queue, **kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish every message in one transaction: all of them are stored, or none."""
        self._check_sizes(messages)
        apply_fifo_keywords(messages, kwargs)
        delay = publish_delay(kwargs, backend="the SQLite backend")
        if not messages:
            return
        now = self._clock()
        if delay is not None:
            with self._db.write() as conn:
                target = queue_config(conn, queue.name)
                if target.fifo:
                    raise fifo_delay_refused(queue.name)
                # The message's own delay replaces the queue's, as on SQS.
                delayed = target._replace(delay_seconds=delay)
                enqueue(conn, delayed, messages, now, self._deduplication)
            self._db.doorbell.ring(queue.name)
            return
        # Encoded before the transaction, so the write lock is held for SQLite's work only.
        rows = [
            (
                m.message_id,
                m.content,
                m.serializer_id,
                m.manifest,
                dump_headers(m.headers),
                m.group_id,
                m.deduplication_id,
                now,
                queue.name,
            )
            for m in messages
        ]
        with self._db.write() as conn:
            # A standard queue takes the rows in one statement that also reads its settings;
            # nothing is inserted if the queue is FIFO (deduplication and groups to check
            # first) or missing, and the general path below decides.
            inserted = conn.executemany(INSERT_INTO_STANDARD_QUEUE, rows).rowcount
            if inserted == 0:
                target = queue_config(conn, queue.name)
                enqueue(conn, target, messages, now, self._deduplication)
            elif inserted != len(rows):
                # One queue row read within one transaction: all rows or none, never some.
                raise BackendError(
                    f"publishing {len(rows)} messages to {queue.name!r} stored {inserted}; "
                    "the transaction was rolled back, nothing was published"
                )
        self._db.doorbell.ring(queue.name)

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Copy every message to each subscribed queue whose filter accepts it, in one
        transaction (a ``delay_seconds`` holds every copy back)."""
        self._check_sizes(messages)
        apply_fifo_keywords(messages, kwargs)
        delay = publish_delay(kwargs, backend="the SQLite backend")
        now = self._clock()
        reached: list[str] = []
        with self._db.write() as conn:
            if (
                conn.execute("SELECT 1 FROM topics WHERE name = ?", (topic.name,)).fetchone()
                is None
            ):
                raise TopicNotFoundError(topic.name)
            subscriptions = conn.execute(
                "SELECT queue, manifests FROM subscriptions WHERE topic = ? ORDER BY queue",
                (topic.name,),
            ).fetchall()
            for queue_name, manifests in subscriptions:
                try:
                    target = queue_config(conn, queue_name)
                except QueueNotFoundError:
                    continue
                if delay is not None:
                    if target.fifo:
                        raise fifo_delay_refused(queue_name)  # rolls the whole publish back
                    target = target._replace(delay_seconds=delay)
                allowed = set(json.loads(manifests)) if manifests else None
                selected = [m for m in messages if allowed is None or m.manifest in allowed]
                enqueue(conn, target, selected, now, self._deduplication)
                if selected:
                    reached.append(queue_name)
        self._db.doorbell.ring(*reached)

    def _check_sizes(self, messages: Sequence[Message]) -> None:
        limit = self._max_message_size
        if limit is None:
            return
        for message in messages:
            size = len(message.content.encode("utf-8"))
            if size > limit:
                raise MessageTooLargeError(size, limit, "SQLite")

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Claim up to ``max_messages`` (default 10) visible messages.

        With ``wait_seconds`` it waits that long for messages to arrive when there are none.
        Publishes to the queue from this process and :meth:`interrupt` wake it at once (an
        interrupt returns ``[]``), and so does the time its next message becomes visible
        again; other processes' publishes are seen at its next check, every
        ``poll_interval`` at first, backing off to ``max_poll_interval`` while the queue
        stays empty.
        """
        max_messages = int(kwargs.get("max_messages") or 10)
        wait = float(kwargs.get("wait_seconds") or 0.0)
        deadline = time.monotonic() + wait
        name = queue.name
        doorbell = self._db.doorbell
        with doorbell.lock:
            interrupts = self._interrupts
        gathered = False
        while True:
            publishes = doorbell.rings(name)
            received, pause = self._poll(name, max_messages)
            remaining = deadline - time.monotonic()
            if received:
                self._busy.delivered(name)
                return received
            if remaining <= 0:
                return received
            if not gathered:
                gathered = True
                gather = self._busy.gather_seconds(name, remaining)
                if gather > 0:
                    # Publishers are at work: what they send in a moment is claimed in one
                    # write rather than one claim per publish.
                    time.sleep(gather)
                    continue
            with doorbell.lock:
                if self._interrupts != interrupts:
                    return []
                doorbell.wait(name, publishes, min(remaining, pause))
                if self._interrupts != interrupts:
                    return []

    def poll_queue(
        self, queue: QueueWrapper, max_messages: int = 10
    ) -> tuple[list[Message], float]:
        """Claim up to ``max_messages`` visible messages without waiting; when there are none,
        also say how long until the next check is due (see :meth:`retrieve_messages`)."""
        return self._poll(queue.name, int(max_messages))

    def watch_queue(self, queue: QueueWrapper, wake: Callable[[], None]) -> QueueWatch:
        """Call ``wake()`` on each publish to ``queue`` from this process and on
        :meth:`interrupt` (see :meth:`MessagingBackend.watch_queue`)."""
        doorbell = self._db.doorbell
        with doorbell.lock:
            interrupts = self._interrupts
        unwatch = doorbell.watch(queue.name, wake)
        return QueueWatch(unwatch, lambda: self._interrupts != interrupts)

    def _poll(self, name: str, max_messages: int) -> tuple[list[Message], float]:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        received, due = self._receive(name, max_messages)
        if received:
            self._idle_waits.pop(name, None)
            self._delivering.add(name)
            return received, 0.0
        if name in self._delivering:
            # The queue just ran dry: a drained backlog's memory can go back.
            self._delivering.discard(name)
            return_freed_memory_when_idle()
        # Other processes' publishes ring no bell here: checked at a backed-off interval.
        pause = self._idle_waits.get(name, self._poll_interval)
        self._idle_waits[name] = min(pause * 2, self._max_poll_interval)
        if due is not None:
            until_due = due - self._clock()
            if until_due > 0:
                pause = min(pause, until_due)
        return [], pause

    def _receive(self, queue_name: str, max_messages: int) -> tuple[list[Message], float | None]:
        """The messages claimed, and when nothing was: the time the queue's next message
        becomes visible (``None``: no message, or unknown)."""
        # A plain read first: idle consumers polling an empty queue never take the write lock.
        # Skipped while the queue keeps yielding messages, where it would only cost time.
        if queue_name not in self._busy_queues:
            with self._db.read() as conn:
                queue_config(conn, queue_name)
                # The queue's earliest visibility, from the index: one lookup.
                probe = conn.execute(
                    "SELECT visible_at FROM messages WHERE queue = ? ORDER BY visible_at LIMIT 1",
                    (queue_name,),
                ).fetchone()
            if probe is None:
                return [], None
            if probe[0] > self._clock():
                return [], float(probe[0])
        with self._db.write() as conn:
            now = self._clock()
            queue = queue_config(conn, queue_name)
            if queue.fifo:
                ids = fifo_candidates(conn, queue.name, now, max_messages)
                rows = rows_by_id(conn, ids)
            else:
                rows = [
                    Row(*row)
                    for row in conn.execute(
                        f"SELECT {COLUMNS} FROM messages WHERE queue = ? AND visible_at <= ? "
                        "ORDER BY visible_at, id LIMIT ?",
                        (queue.name, now, max_messages),
                    )
                ]
            deliver: list[Row] = []
            dead_lettered = False
            for row in rows:
                problem = row_problem(row)
                if problem is not None:
                    logger.error(
                        "row %s of SQLite queue %r is not a readable message (%s): %s",
                        row.id,
                        queue.name,
                        problem,
                        "moved to its dead-letter queue"
                        if queue.dead_letter_queue
                        else f"delivered with what was stored in header {CORRUPT_HEADERS_HEADER}",
                    )
                    if queue.dead_letter_queue:
                        move_to_dead_letter_queue(
                            conn,
                            queue,
                            row,
                            {},
                            f"corrupt row: {problem}",
                            now,
                            self._deduplication,
                            self.visibility_timeout,
                        )
                        dead_lettered = True
                        continue
                    row = row._replace(receive_count=whole_count(row.receive_count))
                if queue.dead_letter_queue and row.receive_count >= queue.max_receive_count:
                    move_to_dead_letter_queue(
                        conn,
                        queue,
                        row,
                        {},
                        "max receive count exceeded",
                        now,
                        self._deduplication,
                        self.visibility_timeout,
                    )
                    dead_lettered = True
                else:
                    deliver.append(row)
            if not deliver:
                self._busy_queues.discard(queue.name)
            else:
                self._busy_queues.add(queue.name)
                token = secrets.randbits(62)
                lease_ends = now + queue.visibility_timeout
                for marks, chunk in _id_slices([row.id for row in deliver]):
                    conn.execute(
                        "UPDATE messages SET receipt = ?, visible_at = ?, "
                        f"receive_count = receive_count + 1 WHERE id IN ({marks})",
                        (token, lease_ends, *chunk),
                    )
        if dead_lettered and queue.dead_letter_queue:
            self._db.doorbell.ring(queue.dead_letter_queue)
        if not deliver:
            return [], None
        return [
            to_message(row, Receipt(queue.name, row.id, token, queue.visibility_timeout))
            for row in deliver
        ], None

    @staticmethod
    def _receipt(message: Message) -> Receipt:
        receipt = message.metadata
        if not isinstance(receipt, Receipt):
            raise ValueError(f"{message!r} was not received from an SQLite backend")
        return receipt

    def acknowledge(self, message: Message) -> None:
        """Delete the message. A late acknowledgement (another consumer has it now) is a
        no-op."""
        self.acknowledge_batch([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete the messages in one transaction."""
        # Grouped by delivery: the messages one receive returned share its token, and a
        # statement per group deletes them together.
        by_token: dict[int, list[int]] = {}
        for receipt in map(self._receipt, messages):
            by_token.setdefault(receipt.token, []).append(receipt.row_id)
        if not by_token:
            return
        statements = [
            (f"DELETE FROM messages WHERE receipt = ? AND id IN ({marks})", (token, *ids))
            for token, row_ids in by_token.items()
            for marks, ids in _id_slices(row_ids)
        ]
        if len(statements) == 1:
            # One statement is a transaction of its own: no BEGIN and COMMIT needed.
            self._db.execute(*statements[0])
            return
        with self._db.write() as conn:
            for statement in statements:
                conn.execute(*statement)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds (a failed attempt).

        On a FIFO queue a delayed message keeps its group blocked while it waits, so the
        group's order holds (and :meth:`queue_stats` counts it as in flight meanwhile).
        """
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`nack`, but not a failed attempt: ``attempt`` stays as it was (the
        delivery still counts towards ``max_receive_count``, the backstop)."""
        self._give_back(message, delay, failed=False)

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = self._receipt(message)
        delay = max(0.0, float(delay))
        with self._db.write() as conn:
            found = conn.execute("SELECT fifo FROM queues WHERE name = ?", (receipt.queue,))
            row = found.fetchone()
            fifo = bool(row[0]) if row else False
            visible_at = self._clock() + delay
            # On a FIFO queue a delayed message keeps its receipt, which blocks its group.
            keep = "" if fifo and delay > 0 else ", receipt = NULL"
            conn.execute(
                f"UPDATE messages SET visible_at = ?, attempts = attempts + ?{keep} "
                "WHERE id = ? AND receipt = ?",
                (visible_at, int(failed), receipt.row_id, receipt.token),
            )
        if delay == 0:
            self._db.doorbell.ring(receipt.queue)

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        receipt = self._receipt(message)
        with self._db.write() as conn:
            try:
                queue = queue_config(conn, receipt.queue)
            except QueueNotFoundError:
                return False
            if queue.dead_letter_queue is None:
                return False
            found = conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE id = ? AND receipt = ?",
                (receipt.row_id, receipt.token),
            ).fetchone()
            if found is None:
                # The lease was lost: the message will come back and be dead-lettered then.
                return True
            now = self._clock()
            reason = headers.get(FAILURE_REASON, "dead-lettered")
            move_to_dead_letter_queue(
                conn,
                queue,
                Row(*found),
                headers,
                reason,
                now,
                self._deduplication,
                self.visibility_timeout,
            )
        self._db.doorbell.ring(queue.dead_letter_queue)
        return True

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        if isinstance(receipt, Receipt) and receipt.lease > 0:
            return receipt.lease
        return self.visibility_timeout

    def extend_visibility(self, message: Message, seconds: float) -> None:
        receipt = self._receipt(message)
        with self._db.write() as conn:
            conn.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
                (self._clock() + float(seconds), receipt.row_id, receipt.token),
            )

    def run_inline(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``fn`` on this thread on a connection that never waits for another's write
        lock (an asyncio dispatcher's calls, on its loop).

        The call still costs SQLite's own work (tens of microseconds), and now and then a
        commit runs a WAL checkpoint (a few milliseconds with ``synchronous="NORMAL"``).

        Raises:
            WouldBlock: another connection was writing; nothing was done.
        """
        return self._db.run_inline(fn, *args, **kwargs)

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait in this process; they return ``[]``."""
        doorbell = self._db.doorbell
        with doorbell.lock:
            self._interrupts += 1
            doorbell.wake_all()

    def close_connection(self) -> None:
        """Interrupt waiting receivers and close every connection (idempotent)."""
        self.interrupt()
        self._db.close()
