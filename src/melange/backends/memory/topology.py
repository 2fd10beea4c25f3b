"""The state of the in-memory broker: queues, the messages they hold, and subscriptions.

:class:`QueueState` holds a queue's settings and its messages by state: ``ready`` (FIFO
queues, in publish order), ``inbox`` (standard queues, in publish order, appended to without
the lock), ``pending`` (redelivered and delayed, by the time they become visible),
``inflight`` (received, by receipt, with their ``leases``: a heap kept in proportion to the
messages in flight), plus the FIFO groups in flight and the deduplication ids
seen. :class:`Subscription` binds a queue to a topic with its manifest filter. The functions
below change that state; the backend calls them with its lock held.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

from melange.backends.embedded_rules import check_type_kept, queue_options
from melange.backends.interfaces import DEFAULT_MAX_RECEIVE_COUNT
from melange.exceptions import QueueNotFoundError
from melange.models import PUBLISHED_AT, Message


class Stored:
    """A message as the broker holds it (never handed out: receivers get fresh copies).

    Kept small, as a queue may hold millions: slots only, the id and headers in their
    compact forms (see :func:`pack_id` and :func:`pack_headers`; the usual id and publish
    time together in ``headers``, with ``packed_id`` ``None``), and the FIFO group and
    deduplication ids only on the messages that have them (:class:`GroupedStored`).
    """

    __slots__ = (
        "attempts",
        "content",
        "headers",
        "manifest",
        "packed_id",
        "receive_count",
        "seq",
        "serializer_id",
        "visible_at",
    )

    #: Set on :class:`GroupedStored` only.
    group_id: str | None = None
    dedup_id: str | None = None

    def __init__(
        self, message: Message, seq: int, headers: Mapping[str, str] | None = None
    ) -> None:
        message_id = message.message_id
        source = message.headers if headers is None else headers
        micros = None
        if len(source) == 1 and len(message_id) == 32:
            published_at = source.get(PUBLISHED_AT)
            if published_at is not None and _PACKABLE_ID.fullmatch(message_id):
                micros = _pack_published_at(published_at)
        if micros is not None:
            # The usual message (a Melange id, only its publish time): both in one int, so
            # that a queued message is one object fewer to allocate, touch and free.
            self.packed_id: str | int | None = None
            self.headers: PackedHeaders = int(message_id, 16) << _TIME_BITS | micros
        else:
            self.packed_id = pack_id(message_id)
            self.headers = pack_headers(source)
        self.content = message.content
        self.serializer_id = message.serializer_id
        self.manifest = message.manifest
        self.seq = seq
        self.receive_count = 0
        self.attempts = 0  # failed attempts (nacks), which ``attempt`` counts
        self.visible_at = 0.0

    @property
    def message_id(self) -> str:
        """The message's id, as it was published."""
        return unpack_id(self.packed_id, self.headers)


class GroupedStored(Stored):
    """A stored message with a FIFO group id or a deduplication id."""

    __slots__ = ("dedup_id", "group_id")

    def __init__(
        self, message: Message, seq: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, seq, headers)
        self.group_id = message.group_id
        self.dedup_id = message.deduplication_id


def store(message: Message, seq: int, headers: Mapping[str, str] | None = None) -> Stored:
    """The message as the broker holds it."""
    if message.group_id is None and message.deduplication_id is None:
        return Stored(message, seq, headers)
    return GroupedStored(message, seq, headers)


#: Packed headers: a flat ``(key, value, ...)`` tuple, or, for the headers almost every
#: message carries (only ``published_at``, as :meth:`Message.create` writes it), the publish
#: time in microseconds as one int; its low :data:`_TIME_BITS` bits, as a :class:`Stored`
#: whose ``packed_id`` is ``None`` keeps its packed id in the bits above them.
PackedHeaders = tuple[str, ...] | int

#: Bits of a packed publish time: microseconds up to the year 2112 (later times stay text).
#: With a 128-bit id above them the int has six 30-bit digits, the size of the id alone.
_TIME_BITS = 52
_TIME_MASK = (1 << _TIME_BITS) - 1

#: Ids :func:`pack_id` packs: what :func:`unpack_id` gives back exactly.
_PACKABLE_ID = re.compile(r"[0-9a-f]{32}")


def pack_id(message_id: str) -> str | int:
    """A message id in its smallest exact form: the 32 lowercase hex digits Melange's ids
    are made of as one int (44 bytes instead of 81); any other id as it is."""
    if len(message_id) == 32 and _PACKABLE_ID.fullmatch(message_id):
        return int(message_id, 16)
    return message_id


def unpack_id(packed: str | int | None, headers: PackedHeaders = ()) -> str:
    """The id :func:`pack_id` packed (``None``: packed in ``headers``, above the time)."""
    if packed is None:
        assert isinstance(headers, int)
        packed = headers >> _TIME_BITS
    return packed if isinstance(packed, str) else f"{packed:032x}"


def pack_headers(headers: Mapping[str, str]) -> PackedHeaders:
    """Headers in a small immutable form (see :data:`PackedHeaders`); a third of a dict's
    size for one header, and a sixth for the usual lone ``published_at``."""
    if not headers:
        return ()
    if len(headers) == 1:
        for key, value in headers.items():
            if key == PUBLISHED_AT:
                packed = _pack_published_at(value)
                if packed is not None:
                    return packed
            return (key, value)
    return tuple(chain.from_iterable(headers.items()))


def _pack_published_at(value: str) -> int | None:
    """A publish time written as :meth:`Message.create` writes it (1 to 12 digits, the first
    not 0, a point, 6 digits) in microseconds; ``None`` for any other text, which would not
    come back the same."""
    if 8 <= len(value) <= 19 and value[-7] == "." and value[0] != "0":
        digits = value[:-7] + value[-6:]
        if digits.isascii() and digits.isdigit():
            micros = int(digits)
            if micros <= _TIME_MASK:
                return micros
    return None


def unpack_headers(packed: PackedHeaders) -> dict[str, str]:
    """A fresh dict of the headers :func:`pack_headers` packed."""
    if isinstance(packed, int):
        seconds, micros = divmod(packed & _TIME_MASK, 1_000_000)
        return {PUBLISHED_AT: f"{seconds}.{micros:06d}"}
    if not packed:
        return {}
    if len(packed) == 2:
        return {packed[0]: packed[1]}
    return dict(zip(packed[::2], packed[1::2], strict=True))


@dataclass
class QueueState:
    """A queue: its settings and the messages it holds."""

    name: str
    fifo: bool
    visibility_timeout: float
    delay_seconds: float = 0.0
    dead_letter_queue: str | None = None
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    # FIFO queues' messages (and, after an inspection, those of ``inbox``): older than
    # anything in ``inbox``.
    ready: deque[Stored] = field(default_factory=deque)
    # Standard queues' messages without delay: publishers append without the lock, receivers
    # take them one at a time under it.
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
    # The most messages it held since it was last empty (seen at receives): a large backlog
    # drained gives its memory back (see melange.backends.heap).
    high_water: int = 0

    @property
    def direct(self) -> bool:
        """Whether a publish without options goes straight to ``inbox`` (a standard queue
        without a delay of its own)."""
        return not self.fifo and self.delay_seconds <= 0


@dataclass
class Subscription:
    """A queue subscribed to a topic, with the manifests it lets through (``None``: all)."""

    queue: str
    manifests: frozenset[str] | None


class Receipt(NamedTuple):
    """What a received message needs to be settled: its queue and the receipt of this
    delivery (a named tuple: one is made per message received, and a tuple is the cheapest
    immutable record to make)."""

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
    """Move the messages of ``inbox`` to ``ready`` (inspection only: receiving takes them
    from ``inbox`` one at a time, so a receive never pays for the depth of the queue)."""
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
    if queue.inbox:
        return queue.inbox.popleft()
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


def compact_leases(queue: QueueState) -> None:
    """Drop the entries of settled and extended leases once they outnumber the live ones.

    A settled lease leaves its entry in the heap; rebuilding the heap from ``inflight``
    whenever stale entries make up more than half of it keeps its size proportional to the
    messages in flight (not to the throughput times the visibility timeout), at an amortized
    O(1) per settle; with nothing in flight it is emptied.
    """
    leases, inflight = queue.leases, queue.inflight
    if not inflight:
        # Nothing in flight: every entry is stale. Dropped at once, as their objects would
        # otherwise keep alive the allocator arenas they sit in (an emptied backlog's memory).
        if leases:
            leases.clear()
    elif len(leases) > 2 * len(inflight) + 32:
        fresh = [(stored.visible_at, receipt) for receipt, stored in inflight.items()]
        heapq.heapify(fresh)
        queue.leases = fresh


def release_lease(queue: QueueState, receipt: int) -> Stored | None:
    """Take the message out of flight (and its FIFO group with it); ``None`` if settled."""
    stored = queue.inflight.pop(receipt, None)
    compact_leases(queue)
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


def note_depth(queue: QueueState) -> None:
    """Record how many messages ``queue`` holds now in its ``high_water``."""
    depth = len(queue.inbox) + len(queue.ready) + len(queue.pending) + len(queue.inflight)
    if depth > queue.high_water:
        queue.high_water = depth


def emptied_after_backlog(queue: QueueState, backlog: int) -> bool:
    """Whether ``queue`` held at least ``backlog`` messages and is empty now (once: its
    ``high_water`` starts over)."""
    if queue.high_water < backlog or queue.inbox or queue.ready or queue.pending:
        return False
    if queue.inflight:
        return False
    queue.high_water = 0
    return True


def to_message(stored: Stored, receipt: Receipt | None) -> Message:
    """A fresh copy of a stored message; ``receipt`` is ``None`` for copies not to settle."""
    packed = stored.headers
    if type(packed) is int and stored.packed_id is None:
        # The usual message, unpacked here without the two calls below (once per receive).
        seconds, micros = divmod(packed & _TIME_MASK, 1_000_000)
        message_id = f"{packed >> _TIME_BITS:032x}"
        headers = {PUBLISHED_AT: f"{seconds}.{micros:06d}"}
    else:
        message_id = unpack_id(stored.packed_id, packed)
        headers = unpack_headers(packed)
    message = Message(
        message_id,
        stored.content,
        receipt,
        stored.serializer_id,
        stored.manifest,
        None,
        stored.attempts + 1 if receipt is not None else stored.attempts or None,
        stored.group_id,
        stored.dedup_id,
    )
    message.headers = headers
    return message


__all__ = [
    "GroupedStored",
    "QueueState",
    "Receipt",
    "Stored",
    "Subscription",
    "compact_leases",
    "create_queue",
    "drain",
    "emptied_after_backlog",
    "expire_leases",
    "group_member",
    "join_group",
    "leave_group",
    "next_candidate",
    "note_depth",
    "pack_headers",
    "pack_id",
    "release_lease",
    "require",
    "store",
    "to_message",
    "unpack_headers",
    "unpack_id",
]
