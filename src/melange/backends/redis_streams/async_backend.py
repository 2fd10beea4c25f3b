""":class:`AsyncRedisStreamsBackend`: the Redis Streams backend on ``redis.asyncio``.

The same operations as :class:`~melange.backends.redis_streams.backend.RedisStreamsBackend`
(see there for how Melange's model maps onto Redis), written once in
:mod:`~melange.backends.redis_streams.operations`: either backend consumes what the other
published. Only the I/O differs: every step is awaited on the event loop, and a receive
waiting for messages blocks a connection of its own with ``XREAD BLOCK`` while the loop goes
on.

The backend holds two connections of its pool: one for its calls, one for its waits. A call
or a wait finding its connection free uses it; one finding it busy (another task's call or
wait is on it) takes a connection from the pool, so tasks never queue behind each other
and a blocked read never shares its connection. Taking a connection from the pool and
giving it back costs about as much CPU as a small command.

Like every asyncio client, an instance serves the event loop it first connected on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.redis_streams.connection import client_options
from melange.backends.redis_streams.inspect import QueueStats
from melange.backends.redis_streams.operations import Command, Script, Steps, Wait
from melange.backends.redis_streams.shared import Progress, StreamsBackendBase
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")


class AsyncRedisStreamsBackend(StreamsBackendBase[aioredis.Redis], AsyncMessagingBackend):
    """Queues and topics on Redis Streams through ``redis.asyncio``.

    Takes the arguments of :class:`~melange.backends.redis_streams.backend.
    RedisStreamsBackend`; ``client`` is then a ``redis.asyncio.Redis`` (decoding responses).
    """

    name: ClassVar[str] = "redis-streams"
    #: The event loop the backend serves (the one of its first operation).
    _loop: asyncio.AbstractEventLoop | None = None
    #: The ``CLIENT UNBLOCK`` tasks of interrupts, kept until done (made at the first).
    _unblocking: set[asyncio.Future[None]] | None = None
    #: The client holding the calls' connection (made at the first call) and whether a
    #: call is on it.
    _held: aioredis.Redis | None = None
    _held_busy = False
    #: The waits' connection (taken at the first wait) and whether a wait is on it.
    _wait_connection: Any = None
    _wait_busy = False

    def _connect(self, url: str, retries: int) -> aioredis.Redis:
        return aioredis.Redis.from_url(url, **client_options(retries, asyncio=True))

    async def _call(self, step: Script | Command) -> Any:
        """Send a script or command on the calls' connection, or on one of the pool while
        another call is on that one."""
        if not self._owns_client or self._held_busy:
            return await self._send(self._r, step)
        held = self._held
        if held is None:
            held = self._held = aioredis.Redis(
                connection_pool=self._r.connection_pool, single_connection_client=True
            )
        self._held_busy = True
        try:
            # A call cancelled or failed half way disconnects the connection (redis-py),
            # so no reply is left on it for the next call.
            return await self._send(held, step)
        finally:
            self._held_busy = False

    async def _run(self, steps: Steps[_T]) -> _T:
        """Perform the steps of an operation (see
        :mod:`~melange.backends.redis_streams.operations`) and return its result."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        progress = Progress(steps)
        try:
            while (step := progress.step) is not None:
                try:
                    if isinstance(step, Wait):
                        reply = await self._wait(step)
                    else:
                        reply = await self._call(step)
                except RedisError as exc:
                    progress.fail(exc)
                else:
                    progress.reply(reply)
        finally:
            progress.close()
        return progress.result

    async def _wait(self, wait: Wait) -> tuple[bool, Any]:
        """As the blocking backend's: block on a connection of its own (the waits' one when
        free), then run ``wait.then`` behind the block in the same round trip."""
        if wait.gather > 0:
            await asyncio.sleep(wait.gather)
        pool: Any = self._r.connection_pool
        held = self._owns_client and not self._wait_busy
        if held:
            self._wait_busy = True
            if self._wait_connection is None:
                try:
                    self._wait_connection = await pool.get_connection()
                except BaseException:
                    self._wait_busy = False
                    raise
            connection = self._wait_connection
        else:
            connection = await pool.get_connection()
        client_id: int | None = None
        answer: Any = None
        try:
            packed, client_id = self._packed_wait(connection, wait)
            await connection.send_packed_command(packed)
            if client_id is None:
                client_id = self._learned_client_id(connection, await connection.read_response())
            if self._ops.waits.started(client_id, wait.interrupts):
                await self._r.client_unblock(client_id)
            await connection.read_response()
            with contextlib.suppress(ResponseError):  # not loaded yet, or failed: run again
                answer = await connection.read_response()
        except (RedisError, OSError):
            await connection.disconnect()
        except asyncio.CancelledError:
            # The replies may still come: the connection cannot be used again.
            await connection.disconnect()
            raise
        finally:
            interrupted = self._ops.waits.ended(client_id, wait.interrupts)
            if held:
                self._wait_busy = False
            else:
                await pool.release(connection)
        return not interrupted, answer

    # -- topology ---------------------------------------------------------------------------

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return await self._run(self._ops.declare_topic(topic_name))

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        return await self._run(self._ops.get_topic(topic_name))

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return await self._run(self._ops.get_queue(queue_name))

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """See :meth:`RedisStreamsBackend.declare_queue
        <melange.backends.redis_streams.backend.RedisStreamsBackend.declare_queue>`."""
        steps = self._ops.declare_queue(queue_name, topics_to_bind, dead_letter_queue_name, kwargs)
        return await self._run(steps)

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self._run(self._ops.delete_queue(queue.name))

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._run(self._ops.delete_topic(topic.name))

    # -- inspection -------------------------------------------------------------------------

    async def queue_names(self) -> list[str]:
        """Names of every queue under the prefix, sorted."""
        return await self._run(self._ops.queue_names())

    async def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue holds: ready, in flight and delayed."""
        return await self._run(self._ops.queue_stats(queue_name))

    async def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue in publish order, without receiving them."""
        return await self._run(self._ops.peek(queue_name, limit))

    async def purge(self, queue_name: str) -> int:
        """Delete every message of the queue, in flight or not; returns how many."""
        return await self._run(self._ops.purge(queue_name))

    # -- publishing -------------------------------------------------------------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self._run(self._ops.publish("q", queue.name, [message], kwargs))

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish every message in one script: all of them are added, or none."""
        await self._run(self._ops.publish("q", queue.name, messages, kwargs))

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self._run(self._ops.publish("t", topic.name, [message], kwargs))

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Add every message to each subscribed queue whose filter accepts it, in one script."""
        await self._run(self._ops.publish("t", topic.name, messages, kwargs))

    # -- consuming --------------------------------------------------------------------------

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """See :meth:`RedisStreamsBackend.retrieve_messages
        <melange.backends.redis_streams.backend.RedisStreamsBackend.retrieve_messages>`."""
        return await self._run(self._ops.retrieve(queue.name, kwargs))

    async def acknowledge(self, message: Message) -> None:
        await self._run(self._ops.acknowledge([message]))

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        await self._run(self._ops.acknowledge(messages))

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._run(self._ops.give_back(message, delay, failed=True))

    async def release(self, message: Message, delay: float = 0.0) -> None:
        await self._run(self._ops.give_back(message, delay, failed=False))

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return await self._run(self._ops.dead_letter(message, headers))

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        await self._run(self._ops.extend_visibility(message, seconds))

    def interrupt(self) -> None:
        """End every waiting :meth:`retrieve_messages` (thread-safe)."""
        blocked = self._ops.waits.interrupt()
        loop = self._loop
        if not blocked or loop is None or loop.is_closed():
            return
        # A loop that just closed has nothing waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._unblock, blocked)

    def _unblock(self, blocked: list[int]) -> None:
        task = asyncio.ensure_future(self._unblock_all(blocked))
        if self._unblocking is None:
            self._unblocking = set()
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
            held, self._held = self._held, None
            if held is not None:
                await held.aclose()
            waiting, self._wait_connection = self._wait_connection, None
            if waiting is not None:
                await self._r.connection_pool.release(waiting)
            await self._r.aclose()
            await self._r.connection_pool.disconnect()


__all__ = ["AsyncRedisStreamsBackend"]
