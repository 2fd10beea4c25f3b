""":class:`AsyncQueueReader`: one aiokafka consumer of a queue's group, and its ledger.

The asyncio twin of :class:`~melange.backends.kafka.reader.QueueReader`, with the same
:class:`~melange.backends.kafka.ledger.Ledger` and the same record layout: it subscribes to
every topic the queue reads, fetches records into the ledger, hands out messages from it and
commits the end of the contiguous prefix of settled records.

Commits go through one task per reader, so an acknowledgement never waits for the broker.
aiokafka rebalances eagerly (every partition is taken away, then handed out again): before
giving its partitions up the reader waits, at most ``drain_timeout`` seconds, for the
messages it handed out from them to be settled, then commits; the next owner delivers again
only what was still in flight.

Held records that keep settled ones uncommitted move to the end of the queue's retry topic
as with the blocking reader (see :mod:`melange.backends.kafka.retries`).

Everything runs on the event loop the reader was started on. The ledger's lock is only ever
held for a few statements, never across an ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from melange.backends.gathering import BusyQueues
from melange.backends.kafka.connection import ClientSettings, logger
from melange.backends.kafka.ledger import Ledger, TopicPartitionKey
from melange.backends.kafka.reader import CATCH_UP_SECONDS, CHUNK_SECONDS
from melange.backends.kafka.retries import MOVE_INTERVAL, MOVE_MARGIN, Record, moved
from melange.backends.kafka.topology import QueueSpec
from melange.backends.kafka.wire import Receipt, receipt_of, received
from melange.models import Message


def _keys(partitions: Iterable[TopicPartition]) -> list[TopicPartitionKey]:
    return [(tp.topic, tp.partition) for tp in partitions]


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, reader: AsyncQueueReader) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.reader.partitions_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.reader.partitions_assigned(list(assigned))


class AsyncQueueReader:
    """A consumer of one queue's group, on the running event loop.

    Args:
        settings: The backend's client settings.
        client: Further aiokafka arguments (security...).
        spec: The queue's catalogue record.
        group: The queue's consumer group.
        drain_timeout: Longest wait, on a rebalance, for messages handed out from the
            partitions being taken away to be settled.
        join_timeout: Longest wait of a first receive for the group to assign partitions.
        publish: Publishes records to a topic once the brokers confirmed them (how held
            records move to the end of the retry topic).
    """

    def __init__(
        self,
        settings: ClientSettings,
        client: dict[str, Any],
        spec: QueueSpec,
        group: str,
        drain_timeout: float,
        join_timeout: float,
        publish: Callable[[str, list[Record]], Awaitable[None]],
    ) -> None:
        self.spec = spec
        self._publish = publish
        self._next_move = 0.0
        self.ledger = Ledger(spec.fifo)
        self._drain_timeout = drain_timeout
        self._join_timeout = join_timeout
        session_ms = round(settings.session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.servers.split(","),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, min(3000, session_ms // 3)),
            max_poll_interval_ms=max(session_ms, round(settings.max_poll_interval * 1000)),
            isolation_level="read_committed",
            # The blocking backend's assignor (ASSIGNOR), so both can share a group.
            partition_assignment_strategy=(RoundRobinPartitionAssignor,),
            **client,
        )
        self._joined = asyncio.Event()
        self._closed = False
        self._receiving = asyncio.Lock()
        # Whether the queue delivered lately (see melange.backends.gathering).
        self._busy = BusyQueues()
        self._pending: dict[TopicPartitionKey, int] = {}
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and subscribe to the queue's topics."""
        await self.consumer.start()
        self.subscribe(self.spec)
        self._committer = asyncio.get_running_loop().create_task(self._commit_loop())

    def subscribe(self, spec: QueueSpec) -> None:
        """Read the topics of ``spec`` (again, when the queue's subscriptions grew)."""
        self.spec = spec
        self.consumer.subscribe(spec.sources, listener=_Rebalances(self))

    # -- rebalances -------------------------------------------------------------------------

    def partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        with self.ledger.lock:
            self.ledger.assigned(_keys(partitions))
        self._joined.set()

    async def partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        keys = _keys(partitions)
        deadline = time.monotonic() + self._drain_timeout
        while not self._closed:
            with self.ledger.lock:
                out = self.ledger.handed_out(keys)
            if not out:
                break
            if time.monotonic() >= deadline:
                logger.warning(
                    "Kafka queue %s: %d message(s) still in flight when the group took their "
                    "partitions away; they will be delivered again",
                    self.spec.name,
                    out,
                )
                break
            await asyncio.sleep(0.02)
        await self._move_stuck(0.0)
        with self.ledger.lock:
            commits = self.ledger.revoked(keys)
            for key in keys:
                # A commit left for a partition taken away could move its next owner back.
                self._pending.pop(key, None)
        await self._commit(commits)

    # -- receiving --------------------------------------------------------------------------

    async def receive(
        self, max_messages: int, wait_seconds: float, interrupted: Callable[[], bool]
    ) -> list[Message]:
        """Up to ``max_messages`` messages, waiting up to ``wait_seconds`` for some (a first
        receive also waits for the group to assign partitions; one that asked not to wait
        still fetches what the broker holds for it)."""
        started = time.monotonic()
        deadline = started + max(0.0, wait_seconds)
        name = self.spec.name
        gathered = False
        async with self._receiving:
            while not self._closed:
                now = time.monotonic()
                if now >= self._next_move:
                    self._next_move = now + MOVE_INTERVAL
                    await self._move_stuck(MOVE_MARGIN)
                with self.ledger.lock:
                    out = self.ledger.take(max_messages, now)
                    due = self.ledger.next_due(now)
                if out:
                    self._busy.delivered(name)
                    return out
                if interrupted():
                    return []
                remaining = deadline - now
                if remaining <= 0:
                    if not self._joined.is_set():
                        remaining = started + self._join_timeout - now
                    elif now - started < CATCH_UP_SECONDS and await self._lagging():
                        remaining = CHUNK_SECONDS
                    if remaining <= 0:
                        return []
                timeout = min(remaining, CHUNK_SECONDS)
                if due is not None:
                    timeout = min(timeout, due)
                if not gathered:
                    # A busy queue's next records are fetched together: each fetch that
                    # finds the consumer's buffer taken asks the broker again at once.
                    gathered = True
                    gather = self._busy.gather_seconds(name, timeout)
                    if gather > 0:
                        await asyncio.sleep(gather)
                        continue
                await self._fill(max_messages, timeout)
        return []

    async def _fill(self, count: int, timeout: float) -> None:
        try:
            batches = await self.consumer.getmany(
                timeout_ms=max(0, round(timeout * 1000)), max_records=count
            )
        except KafkaError as exc:
            logger.warning("Kafka queue %s: %s", self.spec.name, exc)
            await asyncio.sleep(min(timeout, CHUNK_SECONDS))
            return
        with self.ledger.lock:
            for tp, records in batches.items():
                key = (tp.topic, tp.partition)
                assignment = self.ledger.assignment_of(key)
                if assignment is None:
                    continue
                for record in records:
                    message, due = received(
                        self.spec.name,
                        tp.topic,
                        tp.partition,
                        record.offset,
                        assignment,
                        record.value,
                        record.headers,
                    )
                    self.ledger.add(key, record.offset, message, due)

    async def _lagging(self) -> bool:
        """Whether the broker holds records of this consumer's partitions not fetched yet."""
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                return True  # nothing fetched yet
            try:
                position = await self.consumer.position(tp)
            except KafkaError:
                return True
            if position < high:
                return True
        return False

    # -- settling ---------------------------------------------------------------------------

    def settle(self, receipt: Receipt) -> None:
        """The message is done: its partition's commit moves on in the background."""
        with self.ledger.lock:
            moved = self.ledger.settle(receipt)
            if moved is None:
                return
            self._pending[moved[0]] = moved[1]
        self._commit_wanted.set()

    def give_back(self, message: Message, receipt: Receipt, delay: float, failed: bool) -> None:
        """Hand the message out again after ``delay`` seconds (its offset stays uncommitted)."""
        with self.ledger.lock:
            self.ledger.give_back(message, receipt, time.monotonic() + max(0.0, delay), failed)

    def holds(self, receipt: Receipt) -> bool:
        with self.ledger.lock:
            return self.ledger.holds(receipt)

    async def _move_stuck(self, margin: float) -> None:
        """Move the held records that keep settled ones uncommitted to the end of the retry
        topic, then settle them."""
        with self.ledger.lock:
            stuck = self.ledger.stuck(time.monotonic(), margin)
        retries = self.spec.retries
        if not stuck or retries is None:
            return
        try:
            await self._publish(retries, [moved(message, due) for message, due in stuck])
        except Exception as exc:  # kept where they are: moved again on the next look
            logger.warning("Kafka queue %s: held records not moved: %s", self.spec.name, exc)
            with self.ledger.lock:
                self.ledger.hold_again(stuck)
            return
        for message, _ in stuck:
            self.settle(receipt_of(message))

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            with self.ledger.lock:
                pending, self._pending = self._pending, {}
            await self._commit(pending)

    async def _commit(self, offsets: dict[TopicPartitionKey, int]) -> None:
        if not offsets:
            return
        try:
            await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except KafkaError as exc:
            # The group moved the partition meanwhile: its next owner delivers again from the
            # last commit that went through, which is at-least-once.
            logger.info("Kafka queue %s: commit not taken: %s", self.spec.name, exc)
            return
        with self.ledger.lock:
            for key, offset in offsets.items():
                self.ledger.committed(key, offset)

    async def close(self) -> None:
        """Commit what is settled, leave the group and close the consumer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        async with self._receiving:
            await self._move_stuck(0.0)
            with self.ledger.lock:
                commits = self.ledger.commits()
            await self._commit(commits)
            with contextlib.suppress(KafkaError):
                await self.consumer.stop()


__all__ = ["AsyncQueueReader"]
