"""Every operation of the Redis Streams backends, written once as sans-I/O steps.

An operation is a generator (:data:`Steps`): it yields what Redis must do — a command
(:class:`Command`), one of the Lua scripts (:class:`Script`), or an interruptible wait
(:class:`Wait`) — receives the reply, and returns the operation's result. It decides which
script runs with which arguments, how replies are read, which errors become which, and when
a receive waits; the blocking and the asyncio backends only perform what it yields, each
with its own client (their ``_run``, with :class:`~melange.backends.redis_streams.shared.
Progress`). A failed command is thrown back into the operation as the error :func:`failure`
makes of it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Generator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from redis.exceptions import RedisError, ResponseError

from melange.backends.gathering import BusyQueues
from melange.backends.interfaces import BackendCapabilities
from melange.backends.redis_streams.connection import (
    WaitPoint,
    Waits,
    consumer_name,
    xread_arguments,
)
from melange.backends.redis_streams.inspect import QueueStats, peeked, stats_from
from melange.backends.redis_streams.topology import (
    Keys,
    apply_publish_keywords,
    check_kept_type,
    declare_arguments,
    translate,
)
from melange.backends.redis_streams.wire import (
    Receipt,
    publish_arguments,
    receive_answer,
    received,
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


class Command(NamedTuple):
    """A Redis command; the reply is what redis-py's ``execute_command`` returns for it."""

    args: tuple[Any, ...]


class Script(NamedTuple):
    """One of the scripts of :mod:`~melange.backends.redis_streams.scripts`, run with the
    backend's prefix followed by ``args``; the reply is the script's."""

    name: str
    args: tuple[str | int, ...]


class Wait(NamedTuple):
    """Block on ``command`` (an ``XREAD BLOCK``) on a connection of its own, ending early on
    an interrupt of the backend made after ``interrupts`` was read; then run ``then`` on the
    same connection, in the same round trip.

    The reply is ``(woke, answer)``: ``woke`` is ``False`` when an interrupt ended the wait;
    ``answer`` is the reply of ``then``, or ``None`` when it could not be had (the script is
    not loaded yet, it failed, or the connection did): the operation then runs it again.

    ``gather``: seconds to pause before blocking, so that the messages of a busy queue
    published meanwhile are received together (see :mod:`melange.backends.gathering`).
    """

    command: list[Any]
    interrupts: int
    then: Script
    gather: float = 0.0


#: What an operation yields.
Step = Command | Script | Wait
#: An operation: yields steps, receives their replies, returns its result.
Steps = Generator[Step, Any, _T]


def failure(step: Step, exc: RedisError) -> Exception:
    """The error an operation sees when ``step`` failed with ``exc``.

    A script's own refusals become Melange's errors, its other failures a ``BackendError``;
    a plain command's error is passed on as redis-py raised it.
    """
    if not isinstance(step, Script):
        return exc
    made = translate(exc) if isinstance(exc, ResponseError) else None
    if made is None:
        made = BackendError(f"Redis Streams {step.name.lower()} failed: {exc}")
    if made is not exc:
        made.__cause__ = exc
    return made


def capabilities(max_message_size: int | None) -> BackendCapabilities:
    """What the Redis Streams backends (blocking and asyncio) support."""
    return BackendCapabilities(
        name="redis-streams",
        persistent=True,
        fifo=True,
        topics=True,
        native_dead_letter=True,
        delayed_delivery=True,
        visibility_timeout=True,
        extend_visibility=True,
        receive_count=True,
        filter_policies=True,
        max_message_size=max_message_size,
        max_batch_size=None,
    )


def check_options(visibility_timeout: float, deduplication_window: float, retries: int) -> None:
    """Refuse settings that cannot work (shared by both backends)."""
    if visibility_timeout <= 0:
        raise ConfigurationError(f"visibility_timeout must be positive, got {visibility_timeout!r}")
    if deduplication_window <= 0:
        raise ConfigurationError(
            f"deduplication_window must be positive, got {deduplication_window!r}"
        )
    if retries < 0:
        raise ConfigurationError(f"retries must be >= 0, got {retries!r}")


def check_sizes(messages: Sequence[Message], limit: int | None) -> None:
    """Raise ``MessageTooLargeError`` for a body over ``limit`` bytes."""
    if limit is None:
        return
    for message in messages:
        size = len(message.content.encode("utf-8"))
        if size > limit:
            raise MessageTooLargeError(size, limit, "Redis Streams")


def receipt_of(message: Message) -> Receipt:
    """The receipt of a message this backend delivered."""
    receipt = message.metadata
    if not isinstance(receipt, Receipt):
        raise ValueError(f"{message!r} was not received from a Redis Streams backend")
    return receipt


def by_queue(messages: Sequence[Message]) -> dict[str, list[str]]:
    """The acknowledge script's arguments (entry id, deliveries...) per queue."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        receipt = receipt_of(message)
        grouped[receipt.queue] += [receipt.entry_id, str(receipt.delivered)]
    return grouped


def dead_letter_arguments(receipt: Receipt, headers: Mapping[str, str]) -> list[str]:
    """The dead-letter script's arguments after the prefix."""
    return [
        receipt.queue,
        receipt.entry_id,
        str(receipt.delivered),
        json.dumps(dict(headers), ensure_ascii=False) if headers else "{}",
        headers.get(FAILURE_REASON, "dead-lettered"),
    ]


def publish_script(kind: str, name: str, window_ms: str, messages: Sequence[Message]) -> Script:
    """The script that publishes ``messages`` to queue (``q``) or topic (``t``) ``name``.

    Messages for one queue without a deduplication id (the common case) take the short
    script, which only checks the queue and its FIFO rule before adding them.
    """
    arguments = publish_arguments(messages)
    if kind == "q" and all(m.deduplication_id is None for m in messages):
        return Script("PUBLISH_QUEUE", (name, *arguments))
    return Script("PUBLISH", (window_ms, kind, name, *arguments))


class Operations:
    """The operations of one backend instance, as :data:`Steps`.

    Holds what they share between calls: the key names, the consumer name, where each queue's
    next receive waits from and the waits an interrupt must end.
    """

    def __init__(
        self,
        prefix: str,
        visibility_timeout: float,
        deduplication_window: float,
        max_message_size: int | None,
    ) -> None:
        self.keys = Keys(prefix)
        self.visibility_timeout = visibility_timeout
        self.window_ms = str(round(deduplication_window * 1000))
        self.max_message_size = max_message_size
        self.consumer = consumer_name()
        self.waits = Waits()
        self._wait_points: dict[str, WaitPoint] = {}
        #: Which queues delivered lately (see :mod:`melange.backends.gathering`).
        self.busy = BusyQueues()

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> Steps[TopicWrapper]:
        yield Command(("SADD", self.keys.topics, topic_name))
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> Steps[TopicWrapper]:
        if not (yield Command(("SISMEMBER", self.keys.topics, topic_name))):
            raise TopicNotFoundError(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> Steps[QueueWrapper]:
        if not (yield Command(("EXISTS", self.keys.config(queue_name)))):
            raise QueueNotFoundError(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        topics: Sequence[TopicWrapper],
        dead_letter_queue_name: str | None,
        options: Mapping[str, Any],
    ) -> Steps[tuple[QueueWrapper, QueueWrapper | None]]:
        arguments = declare_arguments(
            self.keys.prefix,
            queue_name,
            topics,
            dead_letter_queue_name,
            options,
            self.visibility_timeout,
        )
        existing = yield Command(("HGET", self.keys.config(queue_name), "fifo"))
        check_kept_type(queue_name, options, existing)
        yield Script("DECLARE_QUEUE", tuple(arguments[1:]))
        dlq = (
            QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
            if dead_letter_queue_name
            else None
        )
        return QueueWrapper(queue_name, queue_name), dlq

    def delete_queue(self, queue_name: str) -> Steps[None]:
        yield Script("DELETE_QUEUE", (queue_name,))

    def delete_topic(self, topic_name: str) -> Steps[None]:
        yield Script("DELETE_TOPIC", (topic_name,))

    # -- inspection -------------------------------------------------------------------------

    def queue_names(self) -> Steps[list[str]]:
        return sorted((yield Command(("SMEMBERS", self.keys.queues))))

    def topic_names(self) -> Steps[list[str]]:
        return sorted((yield Command(("SMEMBERS", self.keys.topics))))

    def subscriptions(self, topic_name: str) -> Steps[dict[str, list[str] | None]]:
        yield from self.get_topic(topic_name)
        found = yield Command(("HGETALL", self.keys.subscriptions(topic_name)))
        return {queue: json.loads(f) if f else None for queue, f in sorted(found.items())}

    def queue_stats(self, queue_name: str) -> Steps[QueueStats]:
        return stats_from(queue_name, (yield Script("STATS", (queue_name,))))

    def peek(self, queue_name: str, limit: int) -> Steps[list[Message]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        yield from self.get_queue(queue_name)
        entries = yield Command(("XRANGE", self.keys.stream(queue_name), "-", "+", "COUNT", limit))
        if not entries:
            return []
        failed = yield Command(("HMGET", self.keys.attempts(queue_name), *(e[0] for e in entries)))
        return peeked(entries, failed)

    def purge(self, queue_name: str) -> Steps[int]:
        return int((yield Script("PURGE", (queue_name,))))

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self, kind: str, name: str, messages: Sequence[Message], options: Mapping[str, Any]
    ) -> Steps[None]:
        """Publish ``messages`` to queue (``kind`` ``q``) or topic (``t``) ``name`` in one
        script: all of them are added, or none."""
        apply_publish_keywords(messages, options)
        if messages:
            check_sizes(messages, self.max_message_size)
            yield publish_script(kind, name, self.window_ms, messages)

    # -- consuming --------------------------------------------------------------------------

    def retrieve(self, queue_name: str, options: Mapping[str, Any]) -> Steps[list[Message]]:
        """Receive up to ``max_messages`` (default 10), waiting up to ``wait_seconds``.

        A receive that asks to wait starts with a wait from where the previous receive on
        the queue left off, when that one delivered everything there was; the receive script
        follows the wait in the same round trip. An interrupt ends the wait: the receive
        then returns what that script delivered, most often nothing.
        """
        max_messages = int(options.get("max_messages") or 10)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        deadline = time.monotonic() + float(options.get("wait_seconds") or 0.0)
        interrupts = self.waits.count()
        receive = Script("RECEIVE", (queue_name, self.consumer, max_messages))
        point = self._wait_points.get(queue_name)
        while True:
            answer = None
            woke = True
            if point is not None:
                block = point.block_seconds(deadline - time.monotonic())
                if block > 0:
                    command = xread_arguments(
                        self.keys.stream(queue_name), self.keys.bell(queue_name), point, block
                    )
                    gather = self.busy.gather_seconds(queue_name)
                    woke, answer = yield Wait(command, interrupts, receive, gather)
            if answer is None:
                if not woke:
                    return []
                answer = yield receive
            answer = receive_answer(answer)
            point = WaitPoint.of(answer)
            deliveries = answer[0]
            # A full batch may have left messages behind: the next receive asks first.
            if len(deliveries) < max_messages:
                self._wait_points[queue_name] = point
            else:
                self._wait_points.pop(queue_name, None)
            if deliveries:
                self.busy.delivered(queue_name)
            if deliveries or not woke:
                return received(queue_name, int(answer[5]) / 1000, deliveries)
            if deadline <= time.monotonic():
                return []

    def acknowledge(self, messages: Sequence[Message]) -> Steps[None]:
        """Settle ``messages``, one script per queue; a late acknowledgement is a no-op.

        The script is told this backend's consumer name: what it received is most often
        that consumer's oldest pending entries, which it checks in one command.
        """
        if len(messages) == 1:
            receipt = receipt_of(messages[0])
            arguments = (receipt.queue, self.consumer, receipt.entry_id, str(receipt.delivered))
            yield Script("ACKNOWLEDGE", arguments)
            return
        for queue, pairs in by_queue(messages).items():
            yield Script("ACKNOWLEDGE", (queue, self.consumer, *pairs))

    def give_back(self, message: Message, delay: float, failed: bool) -> Steps[None]:
        """Deliver ``message`` again after ``delay`` seconds (a failed attempt or not)."""
        receipt = receipt_of(message)
        delay_ms = max(0, round(float(delay) * 1000))
        yield Script(
            "GIVE_BACK",
            (
                receipt.queue,
                receipt.entry_id,
                str(receipt.delivered),
                str(delay_ms),
                "1" if failed else "0",
            ),
        )

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> Steps[bool]:
        """Move ``message`` to its queue's dead-letter queue; ``False`` when it has none."""
        try:
            arguments = dead_letter_arguments(receipt_of(message), headers)
            return bool((yield Script("DEAD_LETTER", tuple(arguments))))
        except QueueNotFoundError:
            return False

    def visibility_timeout_for(self, message: Message) -> float | None:
        """The lease of a received message, in seconds."""
        receipt = message.metadata
        if isinstance(receipt, Receipt) and receipt.lease > 0:
            return receipt.lease
        return self.visibility_timeout

    def extend_visibility(self, message: Message, seconds: float) -> Steps[None]:
        """Move the lease of ``message`` on to ``seconds`` from now, while it is held."""
        receipt = receipt_of(message)
        ms = str(max(1, round(float(seconds) * 1000)))
        yield Script("EXTEND", (receipt.queue, receipt.entry_id, str(receipt.delivered), ms))


__all__ = [
    "Command",
    "Operations",
    "Script",
    "Step",
    "Steps",
    "Wait",
    "by_queue",
    "capabilities",
    "check_options",
    "check_sizes",
    "dead_letter_arguments",
    "failure",
    "publish_script",
    "receipt_of",
]
