"""What a queue's consumer holds between fetching records and committing their offsets.

Kafka keeps one committed offset per partition and consumer group: everything before it is
done. Melange settles messages one by one and out of order, so the :class:`Ledger` keeps, per
partition, the offsets fetched and not settled yet; the offset committed is the lowest of
them (the end of the contiguous prefix of settled records). A crash therefore delivers again
only records that were not settled, or were settled after an older one that was not.

The ledger also decides what a receive hands out:

- records fetched and not handed out yet wait in order (``ready``);
- on a FIFO queue, a group with a message out (or held back for a retry) hands out nothing
  more until that message is settled: the group's next records wait behind it, and other
  groups go on;
- a message given back (``nack``/``release``) stays in the ledger, its offset uncommitted,
  and is handed out again once its delay is over, as the next attempt. Nothing else waits
  for it, except the rest of its group on a FIFO queue.
- a record held back (a retry record not due yet, or a message given back for a while)
  keeps its partition's committed offset before it, so what was settled behind it would be
  delivered again after a crash or a rebalance: :meth:`Ledger.stuck` names the held records
  that keep settled ones uncommitted, for the reader to move to the end of the queue's retry
  topic (see :mod:`melange.backends.kafka.retries`).

Partitions come and go with rebalances: each assignment of a partition gets a number, which
the receipts of its records carry, so a settlement of a record whose partition was taken away
since does nothing (the new owner delivers it again from the committed offset).

Not thread-safe by itself: the owner serializes calls with :attr:`Ledger.lock`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from melange.backends.kafka.wire import Receipt
from melange.models import Message

#: A partition: (topic, partition number).
TopicPartitionKey = tuple[str, int]


@dataclass
class _Partition:
    assignment: int
    open: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)
    handed_out: set[int] = field(default_factory=set)
    fetched_to: int | None = None
    committed: int | None = None
    sent: int | None = None

    def commit_point(self) -> int | None:
        while self.heap and self.heap[0] not in self.open:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else self.fetched_to


@dataclass
class _Entry:
    key: TopicPartitionKey
    offset: int
    message: Message
    group: str | None


class Ledger:
    """The records one consumer of a queue fetched and has not committed yet.

    Args:
        fifo: Hand out one message of a group at a time, in order.
    """

    def __init__(self, fifo: bool) -> None:
        self.fifo = fifo
        #: Held while calling any method; notified when a message is settled or given back.
        self.lock = threading.Condition()
        self._partitions: dict[TopicPartitionKey, _Partition] = {}
        self._ready: deque[_Entry] = deque()
        self._waiting: dict[str, deque[_Entry]] = {}
        # FIFO: the group whose head each (partition, offset) is, and each busy group's head.
        self._heads: dict[tuple[TopicPartitionKey, int], str] = {}
        self._busy: dict[str, tuple[TopicPartitionKey, int]] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []
        self._numbers = itertools.count(1)

    # -- assignment -------------------------------------------------------------------------

    def assigned(self, keys: Iterable[TopicPartitionKey]) -> None:
        """Partitions given to this consumer."""
        for key in keys:
            self._partitions[key] = _Partition(next(self._numbers))

    def revoked(self, keys: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Partitions taken away: forget what they held; returns the offsets to commit for
        them first (those that moved on since the last commit)."""
        gone = set(keys)
        commits: dict[TopicPartitionKey, int] = {}
        for key in gone:
            part = self._partitions.pop(key, None)
            if part is None:
                continue
            point = part.commit_point()
            if point is not None and point != part.committed:
                commits[key] = point
        self._ready = deque(e for e in self._ready if e.key not in gone)
        self._delayed = [d for d in self._delayed if d[2].key not in gone]
        heapq.heapify(self._delayed)
        for group, entries in list(self._waiting.items()):
            kept = deque(e for e in entries if e.key not in gone)
            if kept:
                self._waiting[group] = kept
            else:
                del self._waiting[group]
        for group, (key, offset) in list(self._busy.items()):
            if key in gone:
                del self._busy[group]
                self._heads.pop((key, offset), None)
                self._release_group(group)
        self.lock.notify_all()
        return commits

    def partitions(self) -> list[TopicPartitionKey]:
        """The partitions this consumer holds."""
        return list(self._partitions)

    def handed_out(self, keys: Iterable[TopicPartitionKey]) -> int:
        """How many messages of these partitions are out and not settled or given back."""
        return sum(len(p.handed_out) for k in keys if (p := self._partitions.get(k)) is not None)

    # -- fetching and handing out -----------------------------------------------------------

    def add(self, key: TopicPartitionKey, offset: int, message: Message, due: float) -> None:
        """A fetched record (its message carries a receipt of :meth:`assignment_of`); held
        back until ``due`` (a ``time.monotonic()`` value) where that is later than now."""
        part = self._partitions.get(key)
        if part is None or offset in part.open:
            return  # fetched before a rebalance took the partition away, or fetched twice
        if part.fetched_to is not None and offset < part.fetched_to:
            return
        part.open.add(offset)
        heapq.heappush(part.heap, offset)
        part.fetched_to = offset + 1
        group = message.group_id if self.fifo else None
        entry = _Entry(key, offset, message, group)
        if group is not None:
            if group in self._busy:
                self._waiting.setdefault(group, deque()).append(entry)
                return
            self._busy[group] = (key, offset)
            self._heads[(key, offset)] = group
        if due > 0:
            heapq.heappush(self._delayed, (due, next(self._numbers), entry))
        else:
            self._ready.append(entry)

    def assignment_of(self, key: TopicPartitionKey) -> int | None:
        """The number of this consumer's assignment of the partition (``None``: not held)."""
        part = self._partitions.get(key)
        return part.assignment if part is not None else None

    def take(self, count: int, now: float) -> list[Message]:
        """Hand out up to ``count`` messages: retries whose delay is over first."""
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.appendleft(heapq.heappop(self._delayed)[2])
        out: list[Message] = []
        while self._ready and len(out) < count:
            entry = self._ready.popleft()
            part = self._partitions.get(entry.key)
            if part is None or entry.offset not in part.open:
                continue
            part.handed_out.add(entry.offset)
            out.append(entry.message)
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until the next held-back message is due (``None``: none held back)."""
        if not self._delayed:
            return None
        return max(0.0, self._delayed[0][0] - now)

    def stuck(self, now: float, margin: float) -> list[tuple[Message, float]]:
        """Held-back messages that keep settled records behind them uncommitted, with when
        each is due; they leave the held-back ones (:meth:`settle` them once moved, or
        :meth:`hold_again` them). Only messages due in more than ``margin`` seconds are
        named (one due sooner is about to be handed out anyway), and none on a FIFO queue,
        where a message waits ahead of the rest of its group."""
        if self.fifo or not self._delayed:
            return []
        held: dict[TopicPartitionKey, dict[int, tuple[float, int, _Entry]]] = {}
        for delayed in self._delayed:
            entry = delayed[2]
            part = self._partitions.get(entry.key)
            if part is not None and entry.offset in part.open:
                held.setdefault(entry.key, {})[entry.offset] = delayed
        chosen: set[int] = set()
        for key, items in held.items():
            part = self._partitions[key]
            prefix: list[tuple[float, int, _Entry]] = []
            limit = part.fetched_to
            for offset in sorted(part.open):
                item = items.get(offset)
                if item is None or item[0] - now <= margin:
                    limit = offset
                    break
                prefix.append(item)
            if not prefix or limit is None:
                continue
            # Offsets between the first held record and the first one that is not moved,
            # and are not held themselves, are settled: the commit can pass them.
            if limit - prefix[0][2].offset > len(prefix):
                chosen.update(item[1] for item in prefix)
        if not chosen:
            return []
        out = [(item[2].message, item[0]) for item in self._delayed if item[1] in chosen]
        self._delayed = [item for item in self._delayed if item[1] not in chosen]
        heapq.heapify(self._delayed)
        return out

    def hold_again(self, stuck: Iterable[tuple[Message, float]]) -> None:
        """Hold back again messages :meth:`stuck` named and that could not be moved."""
        for message, due in stuck:
            receipt = message.metadata
            if not isinstance(receipt, Receipt) or not self.holds(receipt):
                continue
            key = (receipt.topic, receipt.partition)
            entry = _Entry(key, receipt.offset, message, None)
            heapq.heappush(self._delayed, (due, next(self._numbers), entry))

    def backlog(self) -> int:
        """Messages fetched and not handed out (ready, waiting behind their group, delayed)."""
        return len(self._ready) + len(self._delayed) + sum(map(len, self._waiting.values()))

    # -- settling ---------------------------------------------------------------------------

    def holds(self, receipt: Receipt) -> bool:
        """Whether the message is still this consumer's to settle."""
        part = self._partitions.get((receipt.topic, receipt.partition))
        return (
            part is not None
            and part.assignment == receipt.assignment
            and receipt.offset in part.open
        )

    def settle(self, receipt: Receipt) -> tuple[TopicPartitionKey, int] | None:
        """The message is done; returns the partition and its new offset to commit when the
        committed offset can move on (``None``: it cannot, or the message is not held)."""
        key = (receipt.topic, receipt.partition)
        if not self.holds(receipt):
            return None
        part = self._partitions[key]
        part.open.discard(receipt.offset)
        part.handed_out.discard(receipt.offset)
        group = self._heads.pop((key, receipt.offset), None)
        if group is not None:
            del self._busy[group]
            self._release_group(group)
        self.lock.notify_all()
        point = part.commit_point()
        if point is None or point in (part.committed, part.sent):
            return None
        part.sent = point
        return key, point

    def give_back(self, message: Message, receipt: Receipt, due: float, failed: bool) -> bool:
        """Hand the message out again once ``due`` (monotonic time) has come, as its next
        attempt when ``failed``. Returns ``False`` when the message is not held any more."""
        if not self.holds(receipt):
            return False
        key = (receipt.topic, receipt.partition)
        part = self._partitions[key]
        part.handed_out.discard(receipt.offset)
        again = Receipt(*receipt[:5], receipt.failed + 1 if failed else receipt.failed)
        copy = Message(
            message.message_id,
            message.content,
            again,
            message.serializer_id,
            message.manifest,
            message.headers,
            again.failed + 1,
            message.group_id,
            message.deduplication_id,
        )
        entry = _Entry(key, receipt.offset, copy, self._heads.get((key, receipt.offset)))
        heapq.heappush(self._delayed, (due, next(self._numbers), entry))
        self.lock.notify_all()
        return True

    def commits(self) -> dict[TopicPartitionKey, int]:
        """Offsets to commit for every partition whose committed offset can move on."""
        found: dict[TopicPartitionKey, int] = {}
        for key, part in self._partitions.items():
            point = part.commit_point()
            if point is not None and point != part.committed:
                found[key] = point
        return found

    def committed(self, key: TopicPartitionKey, offset: int) -> None:
        """Record that ``offset`` was committed for the partition."""
        part = self._partitions.get(key)
        if part is not None and (part.committed is None or offset > part.committed):
            part.committed = offset

    def _release_group(self, group: str) -> None:
        waiting = self._waiting.get(group)
        if not waiting:
            self._waiting.pop(group, None)
            return
        entry = waiting.popleft()
        if not waiting:
            del self._waiting[group]
        self._busy[group] = (entry.key, entry.offset)
        self._heads[(entry.key, entry.offset)] = group
        self._ready.append(entry)


__all__ = ["Ledger", "TopicPartitionKey"]
