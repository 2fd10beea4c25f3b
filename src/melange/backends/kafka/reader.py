""":class:`QueueReader`: one Kafka consumer of a queue's group, and its :class:`Ledger`.

It subscribes to every topic the queue reads, fetches records into the ledger, hands out
messages from it and commits offsets as messages are settled (the end of the contiguous
prefix of settled records, asynchronously; synchronously when partitions are taken away and
at close).

On a rebalance, a partition about to be taken away is held until the messages handed out
from it are settled (at most ``drain_timeout`` seconds), then its offset is committed: the
next owner starts right after what this one finished, and delivers again only what was still
in flight. The assignor is eager (``roundrobin``, which aiokafka has too): a rebalance takes
every partition away and hands them out again.

A held record (a retry not due yet) that keeps settled records behind it uncommitted is
moved to the end of the queue's retry topic (see :mod:`melange.backends.kafka.retries`):
while receiving, and for the partitions given up in a rebalance or at close.

librdkafka serves the rebalance callbacks inside ``consume``, so they run on the thread that
receives; settlements may come from any thread (they take the ledger's lock, and librdkafka's
commit is thread-safe).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from melange.backends.kafka.connection import ClientSettings, logger
from melange.backends.kafka.ledger import Ledger, TopicPartitionKey
from melange.backends.kafka.retries import MOVE_INTERVAL, MOVE_MARGIN, Record, moved
from melange.backends.kafka.topology import QueueSpec
from melange.backends.kafka.wire import Receipt, receipt_of, received
from melange.models import Message

#: Longest single wait inside librdkafka, so that an interrupt is seen this soon.
CHUNK_SECONDS = 0.25
#: How long a receive that asked not to wait still waits for records the broker holds and
#: this consumer has not fetched yet (just after joining the group).
CATCH_UP_SECONDS = 2.0

_IGNORED = {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART}


def _keys(partitions: Iterable[TopicPartition]) -> list[TopicPartitionKey]:
    return [(tp.topic, tp.partition) for tp in partitions]


class QueueReader:
    """A consumer of one queue's group, in this process.

    Args:
        settings: The backend's client settings.
        spec: The queue's catalogue record (what it reads, whether it is FIFO).
        group: The queue's consumer group.
        drain_timeout: Longest wait, on a rebalance, for messages handed out from a partition
            being taken away to be settled.
        join_timeout: Longest wait of a first receive for the group to give this consumer
            its partitions.
        publish: Publishes records to a topic and returns once the brokers confirmed them
            (how held records move to the end of the retry topic).
    """

    def __init__(
        self,
        settings: ClientSettings,
        spec: QueueSpec,
        group: str,
        drain_timeout: float,
        join_timeout: float,
        publish: Callable[[str, list[Record]], None],
    ) -> None:
        self.spec = spec
        self._publish = publish
        self._next_move = 0.0
        self.ledger = Ledger(spec.fifo)
        self._drain_timeout = drain_timeout
        self._join_timeout = join_timeout
        self._joined = threading.Event()
        self._closed = False
        # Offsets settlements moved on, to commit from the thread that holds the consumer.
        self._pending: dict[TopicPartitionKey, int] = {}
        self.poll_lock = threading.Lock()
        self.consumer = Consumer(settings.consumer(group))
        self.subscribe(spec)

    def subscribe(self, spec: QueueSpec) -> None:
        """Read the topics of ``spec`` (called again when the queue's subscriptions grow)."""
        self.spec = spec
        self.consumer.subscribe(
            spec.sources,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- rebalance callbacks (on the receiving thread, inside consume) -----------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self.ledger.lock:
            self.ledger.assigned(_keys(partitions))
        self._joined.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = _keys(partitions)
        deadline = time.monotonic() + self._drain_timeout
        with self.ledger.lock:
            # At close the dispatcher has settled what it could: nothing more will come.
            while not self._closed and self.ledger.handed_out(keys):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "Kafka queue %s: %d message(s) still in flight when the group took "
                        "their partitions away; they will be delivered again",
                        self.spec.name,
                        self.ledger.handed_out(keys),
                    )
                    break
                self.ledger.lock.wait(remaining)
        self._move_stuck(0.0)
        with self.ledger.lock:
            commits = self.ledger.revoked(keys)
            self._forget_pending(keys)
        self._commit(commits, asynchronous=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group already gave them to another consumer: committing would be refused.
        keys = _keys(partitions)
        with self.ledger.lock:
            self.ledger.revoked(keys)
            self._forget_pending(keys)

    def _forget_pending(self, keys: Iterable[TopicPartitionKey]) -> None:
        # A commit left over for a partition taken away could move its next owner's offset
        # back (brokers check the generation, not who owns the partition).
        for key in keys:
            self._pending.pop(key, None)

    # -- receiving --------------------------------------------------------------------------

    def receive(
        self, max_messages: int, wait_seconds: float, interrupted: Callable[[], bool]
    ) -> list[Message]:
        """Up to ``max_messages`` messages, waiting up to ``wait_seconds`` for some.

        A first receive also waits (up to the join timeout) for the group to assign this
        consumer its partitions, and a receive that asked not to wait still fetches what the
        broker already holds for it: "nothing now" means nothing is there.
        """
        started = time.monotonic()
        deadline = started + max(0.0, wait_seconds)
        with self.poll_lock:
            while not self._closed:
                now = time.monotonic()
                if now >= self._next_move:
                    self._next_move = now + MOVE_INTERVAL
                    self._move_stuck(MOVE_MARGIN)
                self._commit_pending()
                with self.ledger.lock:
                    out = self.ledger.take(max_messages, now)
                    due = self.ledger.next_due(now)
                if out:
                    return out
                if interrupted():
                    return []
                remaining = deadline - now
                if remaining <= 0:
                    if not self._joined.is_set():
                        remaining = started + self._join_timeout - now
                    elif now - started < CATCH_UP_SECONDS and self._lagging():
                        remaining = CHUNK_SECONDS
                    if remaining <= 0:
                        return []
                timeout = min(remaining, CHUNK_SECONDS)
                if due is not None:
                    timeout = min(timeout, due)
                self._fill(max_messages, timeout)
        return []

    def _fill(self, count: int, timeout: float) -> None:
        # consume() waits for ``count`` records or the timeout: wait for the first only, then
        # take what librdkafka already fetched.
        first = self.consumer.poll(max(timeout, 0.0))
        if first is None:
            return
        records = [first, *self.consumer.consume(count - 1, 0)] if count > 1 else [first]
        with self.ledger.lock:
            for record in records:
                error = record.error()
                if error is not None:
                    if error.code() not in _IGNORED:
                        logger.warning("Kafka queue %s: %s", self.spec.name, error)
                    continue
                topic, partition, offset = record.topic(), record.partition(), record.offset()
                if topic is None or partition is None or offset is None:
                    continue
                assignment = self.ledger.assignment_of((topic, partition))
                if assignment is None:
                    continue
                # A retry record waits in the ledger until it is due (not in the partition:
                # the records behind it go on).
                message, due = received(
                    self.spec.name,
                    topic,
                    partition,
                    offset,
                    assignment,
                    record.value(),
                    record.headers(),
                )
                self.ledger.add((topic, partition), offset, message, due)

    def _lagging(self) -> bool:
        """Whether the broker holds records of this consumer's partitions not fetched yet."""
        with self.ledger.lock:
            keys = self.ledger.partitions()
        if not keys:
            return False
        try:
            positions = self.consumer.position([TopicPartition(t, p) for t, p in keys])
            for tp in positions:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    return True  # nothing fetched yet
                if tp.offset < 0 and high > low:
                    return True  # the partition holds records: where the group is is unknown
                if tp.offset >= 0 and tp.offset < high:
                    return True
        except KafkaException:
            return True
        return False

    # -- settling ---------------------------------------------------------------------------

    def settle(self, receipt: Receipt) -> None:
        """The message is done: commit the offset up to which everything is."""
        self.settle_many((receipt,))

    def settle_many(self, receipts: Iterable[Receipt]) -> None:
        """The messages are done: commit, once for all, the offsets up to which everything is.

        The commit is made by whichever thread holds the consumer: this one when no receive
        is polling, else the receiving thread as soon as its poll returns (librdkafka's
        commit can hang while another thread polls the same consumer).
        """
        moved_any = False
        with self.ledger.lock:
            for receipt in receipts:
                moved = self.ledger.settle(receipt)
                if moved is not None:
                    self._pending[moved[0]] = moved[1]
                    moved_any = True
        if not moved_any:
            return
        if self.poll_lock.acquire(blocking=False):
            try:
                if not self._closed:
                    self._commit_pending()
            finally:
                self.poll_lock.release()

    def _commit_pending(self) -> None:
        """Commit (asynchronously) what settlements moved on; the caller holds the poll lock."""
        with self.ledger.lock:
            pending, self._pending = self._pending, {}
        self._commit(pending, asynchronous=True)

    def give_back(self, message: Message, receipt: Receipt, delay: float, failed: bool) -> None:
        """Hand the message out again after ``delay`` seconds (its offset stays uncommitted)."""
        with self.ledger.lock:
            self.ledger.give_back(message, receipt, time.monotonic() + max(0.0, delay), failed)

    def holds(self, receipt: Receipt) -> bool:
        with self.ledger.lock:
            return self.ledger.holds(receipt)

    def _move_stuck(self, margin: float) -> None:
        """Move the held records that keep settled ones uncommitted to the end of the retry
        topic, then settle them (their offsets are committed with the next commit)."""
        with self.ledger.lock:
            stuck = self.ledger.stuck(time.monotonic(), margin)
        retries = self.spec.retries
        if not stuck or retries is None:
            return
        try:
            self._publish(retries, [moved(message, due) for message, due in stuck])
        except Exception as exc:  # kept where they are: moved again on the next look
            logger.warning("Kafka queue %s: held records not moved: %s", self.spec.name, exc)
            with self.ledger.lock:
                self.ledger.hold_again(stuck)
            return
        with self.ledger.lock:
            for message, _ in stuck:
                commit = self.ledger.settle(receipt_of(message))
                if commit is not None:
                    self._pending[commit[0]] = commit[1]

    def _commit(self, offsets: dict[TopicPartitionKey, int], asynchronous: bool) -> None:
        if not offsets:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if asynchronous:
                self.consumer.commit(offsets=partitions, asynchronous=True)
            else:
                self.consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            # The partition moved to another consumer meanwhile: it delivers again from the
            # last commit that went through, which is at-least-once.
            logger.info("Kafka queue %s: commit not taken: %s", self.spec.name, exc)
            return
        if not asynchronous:
            with self.ledger.lock:
                for key, offset in offsets.items():
                    self.ledger.committed(key, offset)

    def close(self) -> None:
        """Commit what is settled, leave the group and close the consumer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self.poll_lock:
            self._move_stuck(0.0)
            with self.ledger.lock:
                commits = self.ledger.commits()
            self._commit(commits, asynchronous=False)
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.close()


__all__ = ["CATCH_UP_SECONDS", "CHUNK_SECONDS", "QueueReader"]
