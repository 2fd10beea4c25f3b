"""The state of the in-memory broker: queues, the messages they hold, and subscriptions.

:class:`QueueState` holds a queue's settings and its messages by state: ``ready`` (in publish
order), ``inbox`` (published without the lock, moved to ``ready`` under it), ``pending``
(redelivered and delayed, by the time they become visible), ``inflight`` (received, by
receipt, with their ``leases``), plus the FIFO groups in flight and the deduplication ids
seen. :class:`Subscription` binds a queue to a topic with its manifest filter. The functions
below change that state; the backend calls them with its lock held.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.backends.embedded_rules import check_type_kept, queue_options
from melange.backends.interfaces import DEFAULT_MAX_RECEIVE_COUNT
from melange.exceptions import QueueNotFoundError
from melange.models import Message


class Stored:
    """A message as the broker holds it (never handed out: receivers get fresh copies)."""

    __slots__ = (
        "attempts",
        "content",
        "dedup_id",
        "group_id",
        "headers",
        "manifest",
        "message_id",
        "receipt",
        "receive_count",
        "seq",
        "serializer_id",
        "visible_at",
    )

    def __init__(self, message: Message, seq: int, headers: dict[str, str] | None = None) -> None:
        self.message_id = message.message_id
        self.content = message.content
        self.serializer_id = message.serializer_id
        self.manifest = message.manifest
        self.headers = headers if headers is not None else dict(message.headers)
        self.group_id = message.group_id
        self.dedup_id = message.deduplication_id
        self.seq = seq
        self.receive_count = 0
        self.attempts = 0  # failed attempts (nacks), which ``attempt`` counts
        self.receipt = 0
        self.visible_at = 0.0


@dataclass
class QueueState:
    """A queue: its settings and the messages it holds."""

    name: str
    fifo: bool
    visibility_timeout: float
    delay_seconds: float = 0.0
    dead_letter_queue: str | None = None
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    ready: deque[Stored] = field(default_factory=deque)
    # Published without the lock (standard queues, no delay); moved to ``ready`` under the lock.
    inbox: deque[Stored] = field(default_factory=deque)
    # Redelivered and delayed messages, by the time they become visible, then publish order.
    pending: list[tuple[float, int, Stored]] = field(default_factory=list)
    inflight: dict[int, Stored] = field(default_factory=dict)
    leases: list[tuple[float, int]] = field(default_factory=list)
    groups_in_flight: dict[str, int] = field(default_factory=dict)
    dedup_seen: dict[str, float] = field(default_factory=dict)
    # FIFO: each group's messages in publish order (their ``seq``), so that a group's next
    # message is always its oldest one, whenever each became visible again; ``removed`` holds
    # the settled ones not yet at the head.
    group_order: dict[str, deque[int]] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)


@dataclass
class Subscription:
    """A queue subscribed to a topic, with the manifests it lets through (``None``: all)."""

    queue: str
    manifests: frozenset[str] | None


@dataclass(frozen=True)
class Receipt:
    """What a received message needs to be settled: its queue and the receipt of this
    delivery."""

    queue: str
    receipt: int


def create_queue(
    queues: dict[str, QueueState],
    name: str,
    options: Mapping[str, Any],
    default_visibility_timeout: float,
) -> QueueState:
    """Create the queue, or change the options given of an existing one (messages stay)."""
    settings = queue_options("in-memory", name, options, default_visibility_timeout)
    queue = queues.get(name)
    if queue is None:
        queue = QueueState(
            name=name,
            fifo=settings.fifo,
            visibility_timeout=settings.visibility_timeout,
            delay_seconds=settings.delay_seconds,
            max_receive_count=settings.max_receive_count,
        )
        queues[name] = queue
        return queue
    # Declaring again changes the options given; messages stay.
    check_type_kept(name, queue.fifo, settings)
    given = settings.given
    if "visibility_timeout" in given:
        queue.visibility_timeout = settings.visibility_timeout
    if "delay_seconds" in given:
        queue.delay_seconds = settings.delay_seconds
    if "max_receive_count" in given:
        queue.max_receive_count = settings.max_receive_count
    return queue


def require(queues: Mapping[str, QueueState], name: str) -> QueueState:
    """The queue; raises ``QueueNotFoundError`` when it does not exist."""
    queue = queues.get(name)
    if queue is None:
        raise QueueNotFoundError(name)
    return queue


def drain(queue: QueueState) -> None:
    """Move the messages published without the lock to ``ready``."""
    # Called with the lock held. popleft/append are atomic, so publishers may keep adding.
    inbox, ready = queue.inbox, queue.ready
    while inbox:
        ready.append(inbox.popleft())


def next_candidate(queue: QueueState, now: float) -> Stored | None:
    """The message to deliver next, if any is visible."""
    # Redelivered messages due now are older than anything in ``ready``: take them first.
    if queue.pending and queue.pending[0][0] <= now:
        return heapq.heappop(queue.pending)[2]
    if queue.ready:
        return queue.ready.popleft()
    return None


def expire_leases(queue: QueueState, now: float) -> None:
    """Make the messages whose lease ran out visible again."""
    while queue.leases and queue.leases[0][0] <= now:
        _, receipt = heapq.heappop(queue.leases)
        stored = queue.inflight.get(receipt)
        if stored is None or stored.visible_at > now:
            continue  # settled, or its lease was extended
        release_lease(queue, receipt)
        heapq.heappush(queue.pending, (now, stored.seq, stored))


def release_lease(queue: QueueState, receipt: int) -> Stored | None:
    """Take the message out of flight (and its FIFO group with it); ``None`` if settled."""
    stored = queue.inflight.pop(receipt, None)
    if stored is not None and queue.fifo and stored.group_id is not None:
        count = queue.groups_in_flight.get(stored.group_id, 0) - 1
        if count > 0:
            queue.groups_in_flight[stored.group_id] = count
        else:
            queue.groups_in_flight.pop(stored.group_id, None)
    return stored


def join_group(queue: QueueState, stored: Stored) -> None:
    """A FIFO message was enqueued: it comes after the messages its group holds."""
    group = stored.group_id
    if queue.fifo and group is not None:
        order = queue.group_order.get(group)
        if order is None:
            order = queue.group_order[group] = deque()
        order.append(stored.seq)


def leave_group(queue: QueueState, stored: Stored) -> None:
    """A FIFO message left the queue for good (acknowledged or dead-lettered)."""
    group = stored.group_id
    if not queue.fifo or group is None:
        return
    order = queue.group_order.get(group)
    if not order:
        return
    if order[0] != stored.seq:
        queue.removed.add(stored.seq)
        return
    order.popleft()
    removed = queue.removed
    while order and order[0] in removed:
        removed.discard(order.popleft())
    if not order:
        del queue.group_order[group]


def group_member(queue: QueueState, group: str, position: int) -> int | None:
    """The ``seq`` of the group's message at ``position`` (0: its oldest) still held."""
    order = queue.group_order.get(group)
    if not order:
        return None
    removed = queue.removed
    index = 0
    for seq in order:
        if seq in removed:
            continue
        if index == position:
            return seq
        index += 1
    return None


def to_message(stored: Stored, receipt: Receipt | None) -> Message:
    """A fresh copy of a stored message; ``receipt`` is ``None`` for copies not to settle."""
    return Message(
        stored.message_id,
        stored.content,
        receipt,
        stored.serializer_id,
        stored.manifest,
        stored.headers,
        stored.attempts + 1 if receipt is not None else stored.attempts or None,
        stored.group_id,
        stored.dedup_id,
    )


__all__ = [
    "QueueState",
    "Receipt",
    "Stored",
    "Subscription",
    "create_queue",
    "drain",
    "expire_leases",
    "next_candidate",
    "release_lease",
    "require",
    "to_message",
]
