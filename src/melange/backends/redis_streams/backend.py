""":class:`RedisStreamsBackend`: queues and topics on Redis Streams, with redis-py.

Mapping onto Redis (see :mod:`melange.backends.redis_streams.scripts` for the keys):

- **Queue**: a stream read through one consumer group (``melange``), its settings in a hash.
  Every consumer of the queue, in any process, reads through that group with a consumer name
  of its own, so each message goes to one of them (``XREADGROUP``).
- **Lease** (visibility timeout): a received message stays in the group's pending list, and a
  sorted set of leases says until when its receiver holds it. A receive first takes over the
  messages whose lease ran out (``XCLAIM``), then reads new ones. ``extend_visibility`` moves
  the lease on, by any amount (the idle time of the pending list, which is all
  ``XAUTOCLAIM`` can go by, cannot be set into the future, so the leases live beside it).
- **Attempts and the redrive limit**: the pending list counts deliveries; the broker moves a
  message to the dead-letter queue when a receive would deliver it more than
  ``max_receive_count`` times (default 20: a backstop far above the failure policy's
  attempts). ``attempt`` counts failed attempts only (``nack``), kept in a hash per queue,
  so a release, a crash or a lost connection uses up none.
- **Delayed retry**: ``nack(message, delay)`` and ``release(message, delay)`` keep the message
  in the pending list and set its lease to end after the delay: receivers waiting on the
  queue wait until then at most, so nothing polls.
- **Dead letters**: copied, with the failure reason and source queue headers, to the
  dead-letter queue's stream and removed from the queue in one script.
- **Topic**: a hash of subscriptions (queue -> manifest filter); a publish adds the message
  to every subscribed queue in one script, so it reaches all of them or none.
- **FIFO** (names ending in ``.fifo``, or ``fifo=True``): a message with a group in flight or
  delayed waits (out of the leases) until the group's head is settled.
- **Deduplication**: a message with a ``deduplication_id`` the queue saw within
  ``deduplication_window`` seconds (default 300) is dropped at publish, on every queue.
- **Trimming**: an entry is deleted when its message is acknowledged or dead-lettered; the
  stream is never trimmed by length, so nothing unsettled is ever dropped.

Every step that changes more than one key is one Lua script, so it is atomic; times come from
the Redis server's clock, so the clocks of the consuming machines do not matter. Persistence
is Redis's own: with AOF (``appendfsync everysec``) at most the last second of writes can be
lost on a crash of the server.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import RedisError, ResponseError

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.redis_streams import scripts
from melange.backends.redis_streams.connection import (
    WaitPoint,
    Waits,
    client_options,
    client_url,
    consumer_name,
    redacted,
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
from melange.backends.redis_streams.wire import Receipt, publish_arguments, received
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import FAILURE_REASON, Message, QueueWrapper, TopicWrapper

#: The URL of a Redis on this machine, database 0.
DEFAULT_URL = "redis://127.0.0.1:6379/0"


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


class RedisStreamsBackend(MessagingBackend):
    """Queues and topics on Redis Streams (Redis 6.2 or later), through redis-py.

    Every method is thread-safe: each call takes a connection of the client's pool.

    Args:
        url: The Redis to use: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS;
            the backend URL form ``redis+streams://`` is accepted too).
        prefix: Prefix of every key the backend writes (default ``melange:``). Backends with
            different prefixes do not see each other's queues; a prefix with a hash tag
            (``{melange}:``) keeps every key in one slot of a cluster.
        visibility_timeout: Default seconds a received message stays leased to its receiver
            (per queue: ``declare_queue(..., visibility_timeout=...)``). The dispatcher's
            heartbeat renews the lease while a handler runs.
        deduplication_window: Seconds a queue remembers the ``deduplication_id`` of a
            message published to it.
        max_message_size: Largest body accepted, in bytes (``None``: Redis's own limit).
        retries: How many times a command is tried again after a connection error.
        client: A ``redis.Redis`` to use instead of one made from ``url`` (it must decode
            responses); the backend then does not close it.
    """

    loop_wait_seconds = 1.0

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "melange:",
        visibility_timeout: float = 30.0,
        deduplication_window: float = 300.0,
        max_message_size: int | None = None,
        retries: int = 10,
        client: redis.Redis | None = None,
    ) -> None:
        check_options(visibility_timeout, deduplication_window, retries)
        self.url = redacted(url)
        #: Default visibility timeout of new queues, in seconds.
        self.visibility_timeout = float(visibility_timeout)
        self.keys = Keys(prefix)
        self._prefix = prefix
        self._window_ms = str(round(deduplication_window * 1000))
        self._max_message_size = max_message_size
        self._owns_client = client is None
        self.client: redis.Redis = (
            client
            if client is not None
            else redis.Redis.from_url(client_url(url), **client_options(retries))
        )
        # Untyped view of the client: redis-py's stubs type replies as bytes or str.
        self._r: Any = self.client
        self._consumer = consumer_name()
        self._waits = Waits()
        self._wait_points: dict[str, WaitPoint] = {}
        self._scripts = {
            name: self._r.register_script(getattr(scripts, name))
            for name in scripts.__all__
            if name != "GROUP"
        }

    @property
    def capabilities(self) -> BackendCapabilities:
        return capabilities(self._max_message_size)

    def __repr__(self) -> str:
        return f"RedisStreamsBackend({self.url!r}, prefix={self._prefix!r})"

    def _run(self, script: str, *args: str | int) -> Any:
        try:
            return self._scripts[script](keys=[], args=[self._prefix, *args])
        except ResponseError as exc:
            raise translate(exc) from exc
        except RedisError as exc:
            raise BackendError(f"Redis Streams {script.lower()} failed: {exc}") from exc

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        self._r.sadd(self.keys.topics, topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        if not self._r.sismember(self.keys.topics, topic_name):
            raise TopicNotFoundError(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        if not self._r.exists(self.keys.config(queue_name)):
            raise QueueNotFoundError(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or update the queue, its dead-letter queue and its subscriptions.

        Options: ``fifo`` (default: the name ends in ``.fifo``), ``visibility_timeout``,
        ``max_receive_count`` (deliveries before the broker moves a message to the
        dead-letter queue, default 20), ``filter_events`` (manifests the subscriptions let
        through). Declaring again updates the options given and keeps the messages.
        """
        arguments = declare_arguments(
            self._prefix,
            queue_name,
            topics_to_bind,
            dead_letter_queue_name,
            kwargs,
            self.visibility_timeout,
        )
        existing = self._r.hget(self.keys.config(queue_name), "fifo")
        check_kept_type(queue_name, kwargs, existing)
        self._run("DECLARE_QUEUE", *arguments[1:])
        dlq = (
            QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
            if dead_letter_queue_name
            else None
        )
        return QueueWrapper(queue_name, queue_name), dlq

    def delete_queue(self, queue: QueueWrapper) -> None:
        self._run("DELETE_QUEUE", queue.name)

    def delete_topic(self, topic: TopicWrapper) -> None:
        self._run("DELETE_TOPIC", topic.name)

    # -- inspection (the CLI and tests) -----------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of every queue under the prefix, sorted."""
        return sorted(self._r.smembers(self.keys.queues))

    def topic_names(self) -> list[str]:
        """Names of every topic under the prefix, sorted."""
        return sorted(self._r.smembers(self.keys.topics))

    def subscriptions(self, topic_name: str) -> dict[str, list[str] | None]:
        """The queues subscribed to a topic, each with its manifest filter (``None``: all)."""
        self.get_topic(topic_name)
        found = self._r.hgetall(self.keys.subscriptions(topic_name))
        return {queue: json.loads(f) if f else None for queue, f in sorted(found.items())}

    def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue holds: ready, in flight and delayed."""
        return stats_from(queue_name, self._run("STATS", queue_name))

    def queue_depth(self, queue_name: str) -> int:
        """Messages in the queue, in flight or not."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue in publish order, without receiving them
        (their ``metadata`` is ``None``; ``attempt`` tells how many attempts failed)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.get_queue(queue_name)
        entries = self._r.xrange(self.keys.stream(queue_name), count=limit)
        if not entries:
            return []
        failed = self._r.hmget(self.keys.attempts(queue_name), [e[0] for e in entries])
        return peeked(entries, failed)

    def purge(self, queue_name: str) -> int:
        """Delete every message of the queue, in flight or not; returns how many."""
        return int(self._run("PURGE", queue_name))

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_queue([message], queue, **kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish every message in one script: all of them are added, or none."""
        apply_publish_keywords(messages, kwargs)
        if messages:
            check_sizes(messages, self._max_message_size)
            self._run("PUBLISH", self._window_ms, "q", queue.name, *publish_arguments(messages))

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Add every message to each subscribed queue whose filter accepts it, in one script."""
        apply_publish_keywords(messages, kwargs)
        if messages:
            check_sizes(messages, self._max_message_size)
            self._run("PUBLISH", self._window_ms, "t", topic.name, *publish_arguments(messages))

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10): messages whose lease ran out first,
        then new ones.

        With ``wait_seconds`` it waits that long for messages when there are none; a publish
        to the queue, a message given back and :meth:`interrupt` (which returns ``[]``) end
        the wait at once, and so does the end of the queue's next lease.
        """
        max_messages = int(kwargs.get("max_messages") or 10)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        deadline = time.monotonic() + float(kwargs.get("wait_seconds") or 0.0)
        with self._waits.lock:
            interrupts = self._waits.interrupts
        # Waiting first, from where the previous receive left off, when that one delivered
        # everything there was; a wait that ends at once costs a round trip only.
        point = self._wait_points.get(queue.name)
        while True:
            if point is not None:
                block = point.block_seconds(deadline - time.monotonic())
                if block > 0 and not self._wait(queue.name, point, block, interrupts):
                    return []
            answer = self._run("RECEIVE", queue.name, self._consumer, max_messages)
            point = WaitPoint.of(answer)
            # A full batch may have left messages behind: the next receive asks first.
            if len(answer[0]) < max_messages:
                self._wait_points[queue.name] = point
            else:
                self._wait_points.pop(queue.name, None)
            if answer[0]:
                return received(queue.name, int(answer[5]) / 1000, answer[0])
            if deadline <= time.monotonic():
                return []

    def _wait(self, queue: str, point: WaitPoint, seconds: float, interrupts: int) -> bool:
        """Block until the queue's stream or bell moves past ``point`` or ``seconds`` pass;
        ``False`` when an interrupt came."""
        pool: Any = self._r.connection_pool
        connection = pool.get_connection()
        client_id: int | None = None
        try:
            wait = xread_arguments(self.keys.stream(queue), self.keys.bell(queue), point, seconds)
            connection.send_packed_command(connection.pack_commands([("CLIENT", "ID"), wait]))
            client_id = int(connection.read_response())
            with self._waits.lock:
                self._waits.blocked.add(client_id)
                interrupted = self._waits.interrupts != interrupts
            if interrupted:
                self._r.client_unblock(client_id)
            connection.read_response()
        except (RedisError, OSError):
            # The connection failed: the next script reconnects (and retries).
            connection.disconnect()
        finally:
            with self._waits.lock:
                if client_id is not None:
                    self._waits.blocked.discard(client_id)
                interrupted = self._waits.interrupts != interrupts
            pool.release(connection)
        return not interrupted

    def acknowledge(self, message: Message) -> None:
        """Settle the message: its entry is deleted. A late acknowledgement (the message was
        taken over by another receive since) is a no-op."""
        receipt = receipt_of(message)
        self._run("ACKNOWLEDGE", receipt.queue, receipt.entry_id, str(receipt.delivered))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge several messages, one script per queue."""
        for queue, arguments in by_queue(messages).items():
            self._run("ACKNOWLEDGE", queue, *arguments)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Deliver the message again after ``delay`` seconds, as its next attempt.

        On a FIFO queue its group waits meanwhile, so the group's order holds.
        """
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`nack`, but not a failed attempt: ``attempt`` stays as it was (the
        delivery still counts towards ``max_receive_count``, the backstop)."""
        self._give_back(message, delay, failed=False)

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = receipt_of(message)
        delay_ms = max(0, round(float(delay) * 1000))
        self._run(
            "GIVE_BACK",
            receipt.queue,
            receipt.entry_id,
            str(receipt.delivered),
            str(delay_ms),
            "1" if failed else "0",
        )

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        try:
            arguments = dead_letter_arguments(receipt_of(message), headers)
            return bool(self._run("DEAD_LETTER", *arguments))
        except QueueNotFoundError:
            return False

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        if isinstance(receipt, Receipt) and receipt.lease > 0:
            return receipt.lease
        return self.visibility_timeout

    def extend_visibility(self, message: Message, seconds: float) -> None:
        receipt = receipt_of(message)
        self._run(
            "EXTEND",
            receipt.queue,
            receipt.entry_id,
            str(receipt.delivered),
            str(max(1, round(float(seconds) * 1000))),
        )

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait of this backend; they return ``[]``."""
        with self._waits.lock:
            self._waits.interrupts += 1
            blocked = list(self._waits.blocked)
        for client_id in blocked:
            with contextlib.suppress(RedisError):  # else that wait ends by its timeout
                self._r.client_unblock(client_id)

    def close_connection(self) -> None:
        """Interrupt waiting receivers and close the connections (idempotent)."""
        self.interrupt()
        if self._owns_client:
            self._r.close()
            self._r.connection_pool.disconnect()


__all__ = ["DEFAULT_URL", "RedisStreamsBackend", "capabilities"]
