""":class:`AsyncRedisStreamsBackend`: the Redis Streams backend on ``redis.asyncio``.

The same scripts, keys and wire format as :class:`~melange.backends.redis_streams.backend.
RedisStreamsBackend` (see there for how Melange's model maps onto Redis): either backend
consumes what the other published. Only the I/O differs: every call is awaited on the event
loop, and a receive waiting for messages blocks one connection of the pool with
``XREAD BLOCK`` while the loop goes on.

Like every asyncio client, an instance serves the event loop it first connected on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import BackendCapabilities
from melange.backends.redis_streams import scripts
from melange.backends.redis_streams.backend import (
    DEFAULT_URL,
    by_queue,
    capabilities,
    check_options,
    check_sizes,
    dead_letter_arguments,
    receipt_of,
)
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
from melange.exceptions import BackendError, QueueNotFoundError, TopicNotFoundError
from melange.models import Message, QueueWrapper, TopicWrapper


class AsyncRedisStreamsBackend(AsyncMessagingBackend):
    """Queues and topics on Redis Streams through ``redis.asyncio``.

    Takes the arguments of :class:`~melange.backends.redis_streams.backend.
    RedisStreamsBackend`; ``client`` is then a ``redis.asyncio.Redis`` (decoding responses).
    """

    name: ClassVar[str] = "redis-streams"
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
        client: aioredis.Redis | None = None,
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
        self.client: aioredis.Redis = (
            client
            if client is not None
            else aioredis.Redis.from_url(client_url(url), **client_options(retries, asyncio=True))
        )
        # Untyped view of the client: redis-py's stubs type replies as bytes or str.
        self._r: Any = self.client
        self._consumer = consumer_name()
        self._waits = Waits()
        self._wait_points: dict[str, WaitPoint] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unblocking: set[asyncio.Future[None]] = set()
        self._scripts = {
            name: self._r.register_script(getattr(scripts, name))
            for name in scripts.__all__
            if name != "GROUP"
        }

    @property
    def capabilities(self) -> BackendCapabilities:
        return capabilities(self._max_message_size)

    def __repr__(self) -> str:
        return f"AsyncRedisStreamsBackend({self.url!r}, prefix={self._prefix!r})"

    async def _run(self, script: str, *args: str | int) -> Any:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        try:
            return await self._scripts[script](keys=[], args=[self._prefix, *args])
        except ResponseError as exc:
            raise translate(exc) from exc
        except RedisError as exc:
            raise BackendError(f"Redis Streams {script.lower()} failed: {exc}") from exc

    # -- topology ---------------------------------------------------------------------------

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        await self._r.sadd(self.keys.topics, topic_name)
        return TopicWrapper(topic_name, topic_name)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        if not await self._r.sismember(self.keys.topics, topic_name):
            raise TopicNotFoundError(topic_name)
        return TopicWrapper(topic_name, topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        if not await self._r.exists(self.keys.config(queue_name)):
            raise QueueNotFoundError(queue_name)
        return QueueWrapper(queue_name, queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """See :meth:`RedisStreamsBackend.declare_queue
        <melange.backends.redis_streams.backend.RedisStreamsBackend.declare_queue>`."""
        arguments = declare_arguments(
            self._prefix,
            queue_name,
            topics_to_bind,
            dead_letter_queue_name,
            kwargs,
            self.visibility_timeout,
        )
        existing = await self._r.hget(self.keys.config(queue_name), "fifo")
        check_kept_type(queue_name, kwargs, existing)
        await self._run("DECLARE_QUEUE", *arguments[1:])
        dlq = (
            QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
            if dead_letter_queue_name
            else None
        )
        return QueueWrapper(queue_name, queue_name), dlq

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self._run("DELETE_QUEUE", queue.name)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._run("DELETE_TOPIC", topic.name)

    # -- inspection -------------------------------------------------------------------------

    async def queue_names(self) -> list[str]:
        """Names of every queue under the prefix, sorted."""
        return sorted(await self._r.smembers(self.keys.queues))

    async def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue holds: ready, in flight and delayed."""
        return stats_from(queue_name, await self._run("STATS", queue_name))

    async def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue in publish order, without receiving them."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        await self.get_queue(queue_name)
        entries = await self._r.xrange(self.keys.stream(queue_name), count=limit)
        if not entries:
            return []
        failed = await self._r.hmget(self.keys.attempts(queue_name), [e[0] for e in entries])
        return peeked(entries, failed)

    async def purge(self, queue_name: str) -> int:
        """Delete every message of the queue, in flight or not; returns how many."""
        return int(await self._run("PURGE", queue_name))

    # -- publishing -------------------------------------------------------------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self.publish_batch_to_queue([message], queue, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish every message in one script: all of them are added, or none."""
        apply_publish_keywords(messages, kwargs)
        if messages:
            check_sizes(messages, self._max_message_size)
            await self._run(
                "PUBLISH", self._window_ms, "q", queue.name, *publish_arguments(messages)
            )

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self.publish_batch_to_topic([message], topic, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Add every message to each subscribed queue whose filter accepts it, in one script."""
        apply_publish_keywords(messages, kwargs)
        if messages:
            check_sizes(messages, self._max_message_size)
            await self._run(
                "PUBLISH", self._window_ms, "t", topic.name, *publish_arguments(messages)
            )

    # -- consuming --------------------------------------------------------------------------

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """See :meth:`RedisStreamsBackend.retrieve_messages
        <melange.backends.redis_streams.backend.RedisStreamsBackend.retrieve_messages>`."""
        max_messages = int(kwargs.get("max_messages") or 10)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        deadline = time.monotonic() + float(kwargs.get("wait_seconds") or 0.0)
        with self._waits.lock:
            interrupts = self._waits.interrupts
        # As the blocking backend: wait first, from where the previous receive left off.
        point = self._wait_points.get(queue.name)
        while True:
            if point is not None:
                block = point.block_seconds(deadline - time.monotonic())
                if block > 0 and not await self._wait(queue.name, point, block, interrupts):
                    return []
            answer = await self._run("RECEIVE", queue.name, self._consumer, max_messages)
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

    async def _wait(self, queue: str, point: WaitPoint, seconds: float, interrupts: int) -> bool:
        pool: Any = self._r.connection_pool
        connection = await pool.get_connection()
        client_id: int | None = None
        try:
            wait = xread_arguments(self.keys.stream(queue), self.keys.bell(queue), point, seconds)
            await connection.send_packed_command(connection.pack_commands([("CLIENT", "ID"), wait]))
            client_id = int(await connection.read_response())
            with self._waits.lock:
                self._waits.blocked.add(client_id)
                interrupted = self._waits.interrupts != interrupts
            if interrupted:
                await self._r.client_unblock(client_id)
            await connection.read_response()
        except (RedisError, OSError):
            await connection.disconnect()
        except asyncio.CancelledError:
            # The reply may still come: the connection cannot be used again.
            await connection.disconnect()
            raise
        finally:
            with self._waits.lock:
                if client_id is not None:
                    self._waits.blocked.discard(client_id)
                interrupted = self._waits.interrupts != interrupts
            await pool.release(connection)
        return not interrupted

    async def acknowledge(self, message: Message) -> None:
        receipt = receipt_of(message)
        await self._run("ACKNOWLEDGE", receipt.queue, receipt.entry_id, str(receipt.delivered))

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        for queue, arguments in by_queue(messages).items():
            await self._run("ACKNOWLEDGE", queue, *arguments)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._give_back(message, delay, failed=True)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        await self._give_back(message, delay, failed=False)

    async def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = receipt_of(message)
        delay_ms = max(0, round(float(delay) * 1000))
        await self._run(
            "GIVE_BACK",
            receipt.queue,
            receipt.entry_id,
            str(receipt.delivered),
            str(delay_ms),
            "1" if failed else "0",
        )

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        try:
            arguments = dead_letter_arguments(receipt_of(message), headers)
            return bool(await self._run("DEAD_LETTER", *arguments))
        except QueueNotFoundError:
            return False

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        if isinstance(receipt, Receipt) and receipt.lease > 0:
            return receipt.lease
        return self.visibility_timeout

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        receipt = receipt_of(message)
        await self._run(
            "EXTEND",
            receipt.queue,
            receipt.entry_id,
            str(receipt.delivered),
            str(max(1, round(float(seconds) * 1000))),
        )

    def interrupt(self) -> None:
        """End every waiting :meth:`retrieve_messages` (thread-safe); they return ``[]``."""
        with self._waits.lock:
            self._waits.interrupts += 1
            blocked = list(self._waits.blocked)
        loop = self._loop
        if not blocked or loop is None or loop.is_closed():
            return
        # A loop that just closed has nothing waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._unblock, blocked)

    def _unblock(self, blocked: list[int]) -> None:
        task = asyncio.ensure_future(self._unblock_all(blocked))
        self._unblocking.add(task)
        task.add_done_callback(self._unblocking.discard)

    async def _unblock_all(self, blocked: list[int]) -> None:
        for client_id in blocked:
            with contextlib.suppress(RedisError):  # else that wait ends by its timeout
                await self._r.client_unblock(client_id)

    async def aclose(self) -> None:
        """Interrupt waiting receivers and close the connections."""
        self.interrupt()
        if self._unblocking:
            await asyncio.gather(*self._unblocking, return_exceptions=True)
        if self._owns_client:
            await self._r.aclose()
            await self._r.connection_pool.disconnect()


__all__ = ["AsyncRedisStreamsBackend"]
