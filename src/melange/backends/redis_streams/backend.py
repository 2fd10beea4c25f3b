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
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError, ResponseError

from melange.backends.interfaces import MessagingBackend
from melange.backends.redis_streams.connection import client_options
from melange.backends.redis_streams.inspect import QueueStats
from melange.backends.redis_streams.operations import (
    Command,
    Script,
    Steps,
    Wait,
    capabilities,
)
from melange.backends.redis_streams.shared import DEFAULT_URL, Progress, StreamsBackendBase
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")


class RedisStreamsBackend(StreamsBackendBase[redis.Redis], MessagingBackend):
    """Queues and topics on Redis Streams (Redis 6.2 or later), through redis-py.

    Every method is thread-safe. Each thread keeps a connection of the client's pool for its
    calls (taking one from the pool and giving it back costs as much CPU as a small command);
    it goes back to the pool when the thread has ended, at the next thread's first call.

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

    def _connect(self, url: str, retries: int) -> redis.Redis:
        # What each thread holds (only on a client of the backend's own: a given client's
        # type and settings are the caller's).
        self._held_lock = threading.Lock()
        self._local = threading.local()
        self._held: list[tuple[weakref.ref[threading.Thread], redis.Redis]] = []
        self._held_pid = os.getpid()
        return redis.Redis.from_url(url, **client_options(retries))

    def _sender(self) -> Any:
        """The client this thread sends with: one holding a connection of the pool for the
        thread, or the given client."""
        if not self._owns_client:
            return self._r
        held = getattr(self._local, "held", None)
        if held is not None and held[1] == os.getpid():
            return held[0]
        return self._hold()

    def _hold(self) -> redis.Redis:
        """Give this thread a client holding a connection of the pool, after handing the
        connections of ended threads back to it."""
        with self._held_lock:
            pid = os.getpid()
            if self._held_pid != pid:
                # A forked child: the parent's connections are the parent's.
                self._held, self._held_pid = [], pid
            kept = []
            for thread, client in self._held:
                alive = thread()
                if alive is not None and alive.is_alive():
                    kept.append((thread, client))
                else:
                    client.close()
            client = redis.Redis(
                connection_pool=self._r.connection_pool, single_connection_client=True
            )
            kept.append((weakref.ref(threading.current_thread()), client))
            self._held = kept
            self._local.held = (client, pid)
            return client

    def _release_held(self) -> None:
        """Hand every thread's connection back to the pool (their next call takes another)."""
        with self._held_lock:
            held, self._held = self._held, []
            self._local = threading.local()
        for _, client in held:
            client.close()

    def _call(self, step: Script | Command) -> Any:
        return self._send(self._sender(), step)

    def _run(self, steps: Steps[_T]) -> _T:
        """Perform the steps of an operation (see
        :mod:`~melange.backends.redis_streams.operations`) and return its result."""
        progress = Progress(steps)
        try:
            while (step := progress.step) is not None:
                try:
                    reply = self._wait(step) if isinstance(step, Wait) else self._call(step)
                except RedisError as exc:
                    progress.fail(exc)
                else:
                    progress.reply(reply)
        finally:
            progress.close()
        return progress.result

    def _wait(self, wait: Wait) -> tuple[bool, Any]:
        """Block on the thread's connection (one of the pool's, for a given client), then run
        ``wait.then`` behind the block in the same round trip; an interrupt unblocks it from
        another connection."""
        if wait.gather > 0:
            time.sleep(wait.gather)
        held = self._sender().connection if self._owns_client else None
        pool: Any = self._r.connection_pool
        connection = held or pool.get_connection()
        client_id: int | None = None
        answer: Any = None
        try:
            packed, client_id = self._packed_wait(connection, wait)
            connection.send_packed_command(packed)
            if client_id is None:
                client_id = self._learned_client_id(connection, connection.read_response())
            if self._ops.waits.started(client_id, wait.interrupts):
                self._r.client_unblock(client_id)
            connection.read_response()
            with contextlib.suppress(ResponseError):  # not loaded yet, or failed: run again
                answer = connection.read_response()
        except (RedisError, OSError):
            # The connection failed: the script runs again on another (and retries).
            connection.disconnect()
        finally:
            interrupted = self._ops.waits.ended(client_id, wait.interrupts)
            if connection is not held:
                pool.release(connection)
        return not interrupted, answer

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        return self._run(self._ops.declare_topic(topic_name))

    def get_topic(self, topic_name: str) -> TopicWrapper:
        return self._run(self._ops.get_topic(topic_name))

    def get_queue(self, queue_name: str) -> QueueWrapper:
        return self._run(self._ops.get_queue(queue_name))

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
        steps = self._ops.declare_queue(queue_name, topics_to_bind, dead_letter_queue_name, kwargs)
        return self._run(steps)

    def delete_queue(self, queue: QueueWrapper) -> None:
        self._run(self._ops.delete_queue(queue.name))

    def delete_topic(self, topic: TopicWrapper) -> None:
        self._run(self._ops.delete_topic(topic.name))

    # -- inspection (the CLI and tests) -----------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of every queue under the prefix, sorted."""
        return self._run(self._ops.queue_names())

    def topic_names(self) -> list[str]:
        """Names of every topic under the prefix, sorted."""
        return self._run(self._ops.topic_names())

    def subscriptions(self, topic_name: str) -> dict[str, list[str] | None]:
        """The queues subscribed to a topic, each with its manifest filter (``None``: all)."""
        return self._run(self._ops.subscriptions(topic_name))

    def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue holds: ready, in flight and delayed."""
        return self._run(self._ops.queue_stats(queue_name))

    def queue_depth(self, queue_name: str) -> int:
        """Messages in the queue, in flight or not."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue in publish order, without receiving them
        (their ``metadata`` is ``None``; ``attempt`` tells how many attempts failed)."""
        return self._run(self._ops.peek(queue_name, limit))

    def purge(self, queue_name: str) -> int:
        """Delete every message of the queue, in flight or not; returns how many."""
        return self._run(self._ops.purge(queue_name))

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._run(self._ops.publish("q", queue.name, [message], kwargs))

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish every message in one script: all of them are added, or none."""
        self._run(self._ops.publish("q", queue.name, messages, kwargs))

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self._run(self._ops.publish("t", topic.name, [message], kwargs))

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Add every message to each subscribed queue whose filter accepts it, in one script."""
        self._run(self._ops.publish("t", topic.name, messages, kwargs))

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10): messages whose lease ran out first,
        then new ones.

        With ``wait_seconds`` it waits that long for messages when there are none; a publish
        to the queue, a message given back and :meth:`interrupt` end the wait at once, and
        so does the end of the queue's next lease. After an interrupt it returns what the
        receive that follows the wait found (most often ``[]``).
        """
        return self._run(self._ops.retrieve(queue.name, kwargs))

    def acknowledge(self, message: Message) -> None:
        """Settle the message: its entry is deleted. A late acknowledgement (the message was
        taken over by another receive since) is a no-op."""
        self._run(self._ops.acknowledge([message]))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge several messages, one script per queue."""
        self._run(self._ops.acknowledge(messages))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Deliver the message again after ``delay`` seconds, as its next attempt.

        On a FIFO queue its group waits meanwhile, so the group's order holds.
        """
        self._run(self._ops.give_back(message, delay, failed=True))

    def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`nack`, but not a failed attempt: ``attempt`` stays as it was (the
        delivery still counts towards ``max_receive_count``, the backstop)."""
        self._run(self._ops.give_back(message, delay, failed=False))

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return self._run(self._ops.dead_letter(message, headers))

    def extend_visibility(self, message: Message, seconds: float) -> None:
        self._run(self._ops.extend_visibility(message, seconds))

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait of this backend."""
        for client_id in self._ops.waits.interrupt():
            with contextlib.suppress(RedisError):  # else that wait ends by its timeout
                self._r.client_unblock(client_id)

    def close_connection(self) -> None:
        """Interrupt waiting receivers and close the connections (idempotent)."""
        self.interrupt()
        if self._owns_client:
            self._release_held()
            self._r.close()
            self._r.connection_pool.disconnect()


__all__ = ["DEFAULT_URL", "RedisStreamsBackend", "capabilities"]
