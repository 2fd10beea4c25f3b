""":class:`InMemoryMessagingBackend`: publishing, receiving and settling messages held in
process memory.

The queues and subscriptions it keeps, and the steps that change a queue's messages (leases
running out, FIFO groups in flight), are in :mod:`~melange.backends.memory.topology`; the
backend holds them under one lock and adds publishing (FIFO deduplication, delays), receiving
with leases, settling, interrupting waiting receivers and synchronous listeners.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from melange.backends.embedded_rules import (
    DEDUPLICATION_WINDOW_SECONDS,
    check_filter_events,
    dead_letter_copy,
)
from melange.backends.gathering import BusyQueues
from melange.backends.heap import LARGE_BACKLOG, return_freed_memory
from melange.backends.interfaces import BackendCapabilities, MessagingBackend, QueueWatch
from melange.backends.memory.topology import (
    QueueState,
    Receipt,
    Stored,
    Subscription,
    compact_leases,
    create_queue,
    drain,
    emptied_after_backlog,
    expire_leases,
    group_member,
    join_group,
    leave_group,
    next_candidate,
    note_depth,
    release_lease,
    require,
    store,
    to_message,
    unpack_headers,
)
from melange.backends.names import check_embedded_name
from melange.backends.numbers import check_number, check_optional_number
from melange.backends.publish_options import (
    apply_fifo_keywords,
    fifo_delay_refused,
    publish_delay,
)
from melange.exceptions import (
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import FAILURE_REASON, Message, QueueWrapper, TopicWrapper


class InMemoryMessagingBackend(MessagingBackend):
    """A thread-safe broker in process memory, with production delivery semantics.

    Args:
        visibility_timeout: Default seconds a received message stays invisible.
        max_message_size: Largest body accepted, in bytes (``None``: no limit).
        auto_create: Create queues and topics on first use instead of raising
            ``QueueNotFoundError``/``TopicNotFoundError`` (handy in quick tests).
        clock: Monotonic clock in seconds; tests pass a fake one to step through timeouts.
    """

    loop_wait_seconds = 1.0

    def __init__(
        self,
        visibility_timeout: float = 30.0,
        *,
        max_message_size: int | None = None,
        auto_create: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Default visibility timeout of new queues, in seconds (the dispatcher's heartbeat
        #: extends the lease of a message in hand by this much).
        self.visibility_timeout = check_number(
            "visibility_timeout", visibility_timeout, positive=True
        )
        check_optional_number("max_message_size", max_message_size, minimum=1, integer=True)
        self._max_message_size = max_message_size
        self._auto_create = auto_create
        self._clock = clock
        self._lock = threading.Lock()
        # One condition per queue a receiver waits on (all on the one lock): a publish wakes
        # only the receivers of the queues it reached.
        self._arrived: dict[str, threading.Condition] = {}
        self._queues: dict[str, QueueState] = {}
        self._topics: dict[str, list[Subscription]] = {}
        self._seq = itertools.count(1)
        self._receipts = itertools.count(1)
        # Queue name -> callbacks run after a message lands there (see link_synchronously).
        self._listeners: dict[str, list[Callable[[str], None]]] = {}
        self._local = threading.local()
        # Bumped by interrupt(): blocked receivers return early when it changes.
        self._interrupts = 0
        # Queue name -> receivers waiting on it (watchers included).
        self._waiting: dict[str, int] = {}
        # Queue name -> wake callbacks of receivers waiting without a thread (watch_queue).
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        # Queues whose waiting receivers a publish woke, none of which has looked since:
        # later publishes need not wake them again (see _arrive).
        self._rung: set[str] = set()
        # When each queue last delivered to a blocking receive (see retrieve_messages).
        self._busy = BusyQueues()

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            name="memory",
            persistent=False,
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

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        check_embedded_name("topic", topic_name)
        with self._lock:
            self._topics.setdefault(topic_name, [])
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        with self._lock:
            if topic_name not in self._topics:
                if not self._auto_create:
                    raise TopicNotFoundError(topic_name)
                self._topics[topic_name] = []
        return TopicWrapper(topic_name, topic_name)

    #: Everything happens in process memory, under a lock held for microseconds.
    blocking = False

    def get_queue(self, queue_name: str) -> QueueWrapper:
        with self._lock:
            if queue_name not in self._queues:
                if not self._auto_create:
                    raise QueueNotFoundError(queue_name)
                self._create_queue(queue_name, {})
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        filter_events = kwargs.pop("filter_events", None)
        check_filter_events(filter_events)
        manifests = frozenset(filter_events) if filter_events else None
        with self._lock:
            if dead_letter_queue_name is not None and dead_letter_queue_name != queue_name:
                dlq_options = {k: v for k, v in kwargs.items() if k == "fifo"}
                self._create_queue(dead_letter_queue_name, dlq_options)
            queue = self._create_queue(queue_name, kwargs)
            if dead_letter_queue_name is not None:
                queue.dead_letter_queue = dead_letter_queue_name
            for topic in topics_to_bind:
                subscriptions = self._topics.setdefault(topic.name, [])
                subscriptions[:] = [s for s in subscriptions if s.queue != queue_name]
                subscriptions.append(Subscription(queue_name, manifests))
        dlq = QueueWrapper(dead_letter_queue_name) if dead_letter_queue_name else None
        return QueueWrapper(queue_name, queue_name), dlq

    def _create_queue(self, name: str, options: Mapping[str, Any]) -> QueueState:
        return create_queue(self._queues, name, options, self.visibility_timeout)

    def delete_queue(self, queue: QueueWrapper) -> None:
        with self._lock:
            self._queues.pop(queue.name, None)
            for subscriptions in self._topics.values():
                subscriptions[:] = [s for s in subscriptions if s.queue != queue.name]
            self._listeners.pop(queue.name, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        with self._lock:
            self._topics.pop(topic.name, None)

    # -- inspection (tests and tools) -------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of every queue."""
        with self._lock:
            return sorted(self._queues)

    def queue_depth(self, queue_name: str) -> int:
        """Messages in the queue, in flight or not (SQS's visible + not visible)."""
        with self._lock:
            queue = require(self._queues, queue_name)
            return len(queue.ready) + len(queue.inbox) + len(queue.pending) + len(queue.inflight)

    def peek(self, queue_name: str) -> list[Message]:
        """Copies of every message held by the queue, without receiving them."""
        with self._lock:
            queue = require(self._queues, queue_name)
            drain(queue)
            stored = [*queue.ready, *(s for _, _, s in queue.pending), *queue.inflight.values()]
            return [to_message(s, None) for s in sorted(stored, key=lambda s: s.seq)]

    def purge(self, queue_name: str) -> None:
        """Drop every message of the queue."""
        with self._lock:
            queue = require(self._queues, queue_name)
            drain(queue)
            queue.ready.clear()
            queue.pending.clear()
            queue.inflight.clear()
            queue.leases.clear()
            queue.groups_in_flight.clear()
            queue.group_order.clear()
            queue.removed.clear()

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        if not kwargs and self._max_message_size is None:
            # The common case, without the batch's checks of keywords and sizes.
            target = self._queues.get(queue.name)
            if target is not None and target.direct:
                target.inbox.append(store(message, next(self._seq)))
                self._arrive(queue.name)
                return
        self.publish_batch_to_queue([message], queue, **kwargs)

    def _arrive(self, queue_name: str) -> None:
        """Messages were appended to the inbox of ``queue_name`` without the lock: wake its
        receivers and tell its listeners."""
        # A receiver counts itself as waiting before it looks at the inbox a last time,
        # so either it sees these messages or we see it waiting. Every receiver looks at the
        # inbox after taking the queue out of _rung (in _poll), so while the queue is in it,
        # every receiver waiting is woken already and will see these messages.
        if self._waiting.get(queue_name) and queue_name not in self._rung:
            with self._lock:
                self._rung.add(queue_name)
                self._wake(queue_name)
        if self._listeners:
            self._notify([queue_name])

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        self._check_sizes(messages)
        apply_fifo_keywords(messages, kwargs)
        delay = publish_delay(kwargs, backend="the in-memory backend")
        target = self._queues.get(queue.name)
        if delay is None and target is not None and target.direct:
            # The common case takes no lock, so publishers never queue up behind a receiver
            # (under the GIL a contended lock costs a thread switch per message).
            inbox, seq = target.inbox, self._seq
            for message in messages:
                inbox.append(store(message, next(seq)))
            self._arrive(queue.name)
            return
        with self._lock:
            target = self._queues.get(queue.name)
            if target is None:
                if not self._auto_create:
                    raise QueueNotFoundError(queue.name)
                target = self._create_queue(queue.name, {})
            if delay is not None and target.fifo:
                raise fifo_delay_refused(queue.name)
            for message in messages:
                self._enqueue(target, message, delay=delay)
            self._wake(target.name)
        self._notify([queue.name])

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        self._check_sizes(messages)
        apply_fifo_keywords(messages, kwargs)
        delay = publish_delay(kwargs, backend="the in-memory backend")
        reached: list[str] = []
        with self._lock:
            subscriptions = self._topics.get(topic.name)
            if subscriptions is None:
                if not self._auto_create:
                    raise TopicNotFoundError(topic.name)
                subscriptions = self._topics[topic.name] = []
            if delay is not None:
                # Refused before any copy is stored: all of them are delayed, or none sent.
                for sub in subscriptions:
                    subscribed = self._queues.get(sub.queue)
                    if subscribed is not None and subscribed.fifo:
                        raise fifo_delay_refused(sub.queue)
            for sub in subscriptions:
                target = self._queues.get(sub.queue)
                if target is None:
                    continue
                for message in messages:
                    if sub.manifests is None or message.manifest in sub.manifests:
                        self._enqueue(target, message, delay=delay)
                        reached.append(sub.queue)
            if reached:
                self._wake(*reached)
        self._notify(list(dict.fromkeys(reached)))

    def _check_sizes(self, messages: Iterable[Message]) -> None:
        limit = self._max_message_size
        if limit is None:
            return
        for message in messages:
            size = len(message.content.encode("utf-8"))
            if size > limit:
                raise MessageTooLargeError(size, limit, "in-memory")

    def _enqueue(
        self,
        queue: QueueState,
        message: Message,
        headers: dict[str, str] | None = None,
        delay: float | None = None,
    ) -> None:
        """Store ``message`` in ``queue``, visible after ``delay`` seconds (default: the
        queue's own delay)."""
        now = self._clock()
        if queue.fifo:
            if message.group_id is None:
                raise ConfigurationError(
                    f"queue {queue.name!r} is FIFO: publish with a message_group_id"
                )
            dedup = message.deduplication_id
            if dedup is not None:
                seen = queue.dedup_seen.get(dedup)
                if seen is not None and now - seen < DEDUPLICATION_WINDOW_SECONDS:
                    return
                queue.dedup_seen[dedup] = now
        stored = store(message, next(self._seq), headers)
        join_group(queue, stored)
        hold = queue.delay_seconds if delay is None else delay
        if hold > 0:
            stored.visible_at = now + hold
            heapq.heappush(queue.pending, (stored.visible_at, stored.seq, stored))
        elif queue.fifo:
            queue.ready.append(stored)
        else:
            queue.inbox.append(stored)  # in publish order with the lock-free publishes

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        max_messages = int(kwargs.get("max_messages") or 10)
        wait = float(kwargs.get("wait_seconds") or 0.0)
        deadline = time.monotonic() + wait
        name = queue.name
        gathered = False
        with self._lock:
            generation = self._interrupts
            while True:
                received, pause = self._poll(name, max_messages)
                remaining = deadline - time.monotonic()
                if received or remaining <= 0 or generation != self._interrupts:
                    if received:
                        self._busy.delivered(name)
                    return received
                if pause <= 0:
                    continue
                if not gathered:
                    gathered = True
                    gather = self._busy.gather_seconds(name, remaining)
                    if gather > 0:
                        # Publishers are at work: let them run a moment, without the lock or
                        # a wake per publish, and take what they sent in one receive.
                        self._lock.release()
                        try:
                            time.sleep(gather)
                        finally:
                            self._lock.acquire()
                        continue
                arrived = self._arrived.get(name)
                if arrived is None:
                    arrived = self._arrived[name] = threading.Condition(self._lock)
                self._waiting[name] = self._waiting.get(name, 0) + 1
                try:
                    if not require(self._queues, name).inbox:
                        arrived.wait(min(remaining, pause))
                finally:
                    self._stop_waiting(name)

    def poll_queue(
        self, queue: QueueWrapper, max_messages: int = 10
    ) -> tuple[list[Message], float]:
        """Receive up to ``max_messages`` without waiting; when there are none, also say how
        long until a delayed or leased message is due."""
        with self._lock:
            return self._poll(queue.name, int(max_messages))

    def watch_queue(self, queue: QueueWrapper, wake: Callable[[], None]) -> QueueWatch:
        """Call ``wake()`` on each publish to ``queue`` and on :meth:`interrupt` (see
        :meth:`MessagingBackend.watch_queue`)."""
        name = queue.name
        with self._lock:
            generation = self._interrupts
            self._watchers.setdefault(name, []).append(wake)
            # Counted as a waiting receiver: lock-free publishes then take the lock to wake it.
            self._waiting[name] = self._waiting.get(name, 0) + 1

        def cancel() -> None:
            with self._lock:
                watchers = self._watchers.get(name)
                if watchers is None or wake not in watchers:
                    return
                watchers.remove(wake)
                if not watchers:
                    del self._watchers[name]
                self._stop_waiting(name)

        return QueueWatch(cancel, lambda: self._interrupts != generation)

    def _poll(self, name: str, max_messages: int) -> tuple[list[Message], float]:
        """With the lock held: receive without waiting, and when nothing came, how long until
        something is due (``0``: messages landed meanwhile)."""
        # Looked at from here: the next publish wakes the waiting receivers again.
        self._rung.discard(name)
        while True:
            target = require(self._queues, name)
            received = self._receive(target, max_messages)
            if received:
                return received, 0.0
            if emptied_after_backlog(target, LARGE_BACKLOG):
                # A large backlog was drained: its memory goes back to the system now that a
                # receive finds nothing to deliver (not at the acknowledgement of its last
                # message, which would delay that message's consumer), and without the lock,
                # which publishers and other receivers need.
                self._lock.release()
                try:
                    return_freed_memory()
                finally:
                    self._lock.acquire()
                continue
            return [], 0.0 if target.inbox else self._next_wakeup(target)

    def _stop_waiting(self, name: str) -> None:
        if self._waiting[name] > 1:
            self._waiting[name] -= 1
        else:
            del self._waiting[name]

    def _wake(self, *queue_names: str) -> None:
        """Wake the receivers waiting on ``queue_names`` (on every queue when none given)."""
        # Called with the lock held; skipping notify when nobody waits keeps publish cheap.
        waiting = self._waiting
        if not waiting:
            return
        for name in queue_names or list(waiting):
            if waiting.get(name):
                arrived = self._arrived.get(name)
                if arrived is not None:
                    arrived.notify_all()
                for wake in self._watchers.get(name, ()):
                    wake()

    def _next_wakeup(self, queue: QueueState) -> float:
        times = [t for t, _ in queue.leases[:1]] + [t for t, _, _ in queue.pending[:1]]
        if not times:
            return 3600.0
        return max(0.001, min(times) - self._clock())

    def _receive(self, queue: QueueState, max_messages: int) -> list[Message]:
        now = self._clock()
        expire_leases(queue, now)
        note_depth(queue)
        if (
            not queue.fifo
            and not queue.ready
            and not (queue.pending and queue.pending[0][0] <= now)
        ):
            return self._receive_inbox(queue, max_messages, now)
        out: list[Message] = []
        blocked: list[Stored] = []
        # Redelivered messages of busy groups go back to ``pending`` under their own key: in
        # ``ready`` they would fall behind later messages of their group redelivered after.
        blocked_pending: list[tuple[float, int, Stored]] = []
        # FIFO groups delivered in this batch, and how many of each.
        batch_groups: dict[str, int] = {}
        while len(out) < max_messages:
            due = queue.pending[0] if queue.pending and queue.pending[0][0] <= now else None
            stored = next_candidate(queue, now)
            if stored is None:
                break
            group = stored.group_id
            if queue.fifo and group is not None:
                taken = batch_groups.get(group, 0)
                # A group goes out in order: nothing while one of its messages is in flight
                # (unless taken by this batch), and only its oldest message next.
                if (taken == 0 and group in queue.groups_in_flight) or stored.seq != group_member(
                    queue, group, taken
                ):
                    if due is not None:
                        blocked_pending.append(due)
                    else:
                        blocked.append(stored)
                    continue
            if stored.receive_count >= queue.max_receive_count and queue.dead_letter_queue:
                self._move_to_dlq(queue, stored, "max receive count exceeded")
                self._wake(queue.dead_letter_queue)
                continue
            stored.receive_count += 1
            receipt = next(self._receipts)
            stored.visible_at = now + queue.visibility_timeout
            queue.inflight[receipt] = stored
            heapq.heappush(queue.leases, (stored.visible_at, receipt))
            if queue.fifo and group is not None:
                queue.groups_in_flight[group] = queue.groups_in_flight.get(group, 0) + 1
                batch_groups[group] = batch_groups.get(group, 0) + 1
            out.append(to_message(stored, Receipt(queue.name, receipt)))
        # Messages of busy groups go back in front, in their original order.
        for stored in sorted(blocked, key=lambda s: s.seq, reverse=True):
            queue.ready.appendleft(stored)
        for entry in blocked_pending:
            heapq.heappush(queue.pending, entry)
        return out

    def _receive_inbox(self, queue: QueueState, max_messages: int, now: float) -> list[Message]:
        """:meth:`_receive` of a standard queue whose next messages are all in ``inbox``
        (nothing redelivered is due): the common case, in a loop without the FIFO and
        redelivery steps."""
        out: list[Message] = []
        inbox, inflight, leases = queue.inbox, queue.inflight, queue.leases
        visible_at = now + queue.visibility_timeout
        limit = queue.max_receive_count if queue.dead_letter_queue else None
        receipts, name = self._receipts, queue.name
        while inbox and len(out) < max_messages:
            stored = inbox.popleft()
            if limit is not None and stored.receive_count >= limit:
                self._move_to_dlq(queue, stored, "max receive count exceeded")
                self._wake(queue.dead_letter_queue or name)
                continue
            stored.receive_count += 1
            receipt = next(receipts)
            stored.visible_at = visible_at
            inflight[receipt] = stored
            heapq.heappush(leases, (visible_at, receipt))
            out.append(to_message(stored, Receipt(name, receipt)))
        return out

    def _move_to_dlq(
        self,
        queue: QueueState,
        stored: Stored,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Move ``stored`` to the queue's dead-letter queue, with ``headers`` (default: its
        own) and the failure's."""
        assert queue.dead_letter_queue is not None
        leave_group(queue, stored)
        dlq = self._queues.get(queue.dead_letter_queue)
        if dlq is None:
            # Deleted behind our back: recreate it rather than drop the message.
            dlq = self._create_queue(queue.dead_letter_queue, {"fifo": queue.fifo})
        copy, headers = dead_letter_copy(
            to_message(stored, None),
            unpack_headers(stored.headers) if headers is None else headers,
            source_queue=queue.name,
            reason=reason,
            into_fifo=dlq.fifo,
        )
        self._enqueue(dlq, copy, headers)

    def _lease(self, message: Message) -> tuple[QueueState, int] | None:
        receipt = message.metadata
        if not isinstance(receipt, Receipt):
            raise ValueError(f"{message!r} was not received from an in-memory backend")
        queue = self._queues.get(receipt.queue)
        if queue is None or receipt.receipt not in queue.inflight:
            return None  # queue deleted or lease expired: a late settle is a no-op
        return queue, receipt.receipt

    def acknowledge(self, message: Message) -> None:
        self.acknowledge_batch([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        with self._lock:
            freed: set[str] = set()  # FIFO queues whose groups may go on
            settled: list[QueueState] = []  # the queues settled from (usually one)
            for message in messages:
                lease = self._lease(message)
                if lease is None:
                    continue
                queue, receipt = lease
                if queue.fifo:
                    stored = release_lease(queue, receipt)
                    if stored is not None:
                        leave_group(queue, stored)
                    freed.add(queue.name)
                else:
                    # A standard queue's message only leaves ``inflight``; its lease entry
                    # goes at the compaction below, once for the batch.
                    del queue.inflight[receipt]
                if not settled or settled[-1] is not queue:
                    settled.append(queue)
            for queue in settled:
                compact_leases(queue)
            if freed:
                self._wake(*freed)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Deliver ``message`` again after ``delay`` seconds (a failed attempt)."""
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`nack`, but not a failed attempt: ``attempt`` stays as it was (the
        delivery still counts towards ``max_receive_count``, the backstop)."""
        self._give_back(message, delay, failed=False)

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        with self._lock:
            lease = self._lease(message)
            if lease is None:
                return
            queue, receipt = lease
            stored = queue.inflight[receipt]
            stored.attempts += failed
            if queue.fifo and delay > 0:
                # The group stays blocked while its head waits, as on SQS FIFO.
                stored.visible_at = self._clock() + delay
                heapq.heappush(queue.leases, (stored.visible_at, receipt))
                compact_leases(queue)
                return
            release_lease(queue, receipt)
            stored.visible_at = self._clock() + max(0.0, delay)
            heapq.heappush(queue.pending, (stored.visible_at, stored.seq, stored))
            self._wake(queue.name)

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        with self._lock:
            lease = self._lease(message)
            if lease is None:
                receipt = message.metadata
                queue = self._queues.get(receipt.queue) if isinstance(receipt, Receipt) else None
                return queue is not None and queue.dead_letter_queue is not None
            queue, receipt_id = lease
            if queue.dead_letter_queue is None:
                return False
            stored = release_lease(queue, receipt_id)
            assert stored is not None
            self._move_to_dlq(
                queue,
                stored,
                headers.get(FAILURE_REASON, "dead-lettered"),
                {**unpack_headers(stored.headers), **headers},
            )
            self._wake(queue.name, *filter(None, [queue.dead_letter_queue]))
            return True

    def extend_visibility(self, message: Message, seconds: float) -> None:
        with self._lock:
            lease = self._lease(message)
            if lease is None:
                return
            queue, receipt = lease
            stored = queue.inflight[receipt]
            stored.visible_at = self._clock() + seconds
            heapq.heappush(queue.leases, (stored.visible_at, receipt))
            compact_leases(queue)  # the lease's previous entry is stale now

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        if isinstance(receipt, Receipt):
            with self._lock:
                queue = self._queues.get(receipt.queue)
                if queue is not None:
                    return queue.visibility_timeout
        return self.visibility_timeout

    def interrupt(self) -> None:
        with self._lock:
            self._interrupts += 1
            self._wake()

    def close_connection(self) -> None:
        self.interrupt()

    # -- synchronous delivery (see melange.backends.testing.link_synchronously) -------------

    def add_listener(self, queue_name: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(queue_name)`` each time messages land in the queue.

        Callbacks run in the publishing thread after the publish returns; one that publishes
        again does not recurse: the new deliveries run after it returns.
        """
        with self._lock:
            self._listeners.setdefault(queue_name, []).append(callback)

    def _notify(self, queue_names: list[str]) -> None:
        if not self._listeners:
            return
        pending: deque[str] | None = getattr(self._local, "pending", None)
        if pending is not None:
            pending.extend(queue_names)
            return
        pending = self._local.pending = deque(queue_names)
        try:
            while pending:
                name = pending.popleft()
                with self._lock:
                    callbacks = list(self._listeners.get(name, ()))
                for callback in callbacks:
                    callback(name)
        finally:
            self._local.pending = None
