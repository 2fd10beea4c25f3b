"""The asyncio API: publishers and a dispatcher for ``async`` services.

The same decisions as the threaded API (decoding, routing, acknowledgement, retries,
dead-lettering, deduplication: see :mod:`melange.dispatch_core`) drive these classes.
Consumers may be ``async``: a consumer whose ``on_message`` (or ``@consumer`` method, or
``process``) is a coroutine function is awaited; plain ones are called directly. Backend and
cache calls run in worker threads (``asyncio.to_thread``) so they never block the event loop::

    dispatcher = AsyncMessageDispatcher(JsonSerializer(), backend=backend,
                                        consumers=[Consumer(on_message=handle_order)])
    await dispatcher.consume_loop("orders", concurrency=8)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from melange.consumers import Consumer
from melange.context import processing
from melange.dispatch_core import (
    ABANDON,
    ACK,
    ConsumerResult,
    Decoded,
    Verdict,
    decode,
    poison_verdict,
    settle,
)
from melange.message_dispatcher import MessageDispatcher
from melange.models import Message, QueueWrapper
from melange.publishers import QueuePublisher, TopicPublisher

logger = logging.getLogger("melange.dispatcher")


class _AsyncPublisher:
    _sync: QueuePublisher | TopicPublisher

    async def publish(
        self,
        destination: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it; returns the envelope that was sent."""
        # Built here, in the caller's task, so the causation id is this task's message.
        message = self._sync._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        return await asyncio.to_thread(self._sync._publish, destination, message)

    async def publish_batch(
        self, destination: str, items: Iterable[Any], **kwargs: Any
    ) -> list[Message]:
        """Publish several messages in as few broker calls as the backend allows."""
        return await asyncio.to_thread(self._sync.publish_batch, destination, list(items), **kwargs)


class AsyncQueuePublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.QueuePublisher` (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync = QueuePublisher(*args, **kwargs)


class AsyncTopicPublisher(_AsyncPublisher):
    """``async`` twin of :class:`~melange.publishers.TopicPublisher` (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync = TopicPublisher(*args, **kwargs)


class AsyncMessageDispatcher(MessageDispatcher):
    """``async`` twin of :class:`~melange.message_dispatcher.MessageDispatcher`.

    Takes the same arguments. :meth:`consume_event` and :meth:`consume_loop` are coroutines;
    :meth:`stop` may be called from any thread or task.
    """

    async def consume_event(self, queue_name: str, **kwargs: Any) -> int:  # type: ignore[override]
        """Receive one batch from ``queue_name`` and dispatch it; returns its size."""
        queue = await asyncio.to_thread(self._backend.get_queue, queue_name)
        messages = await asyncio.to_thread(self._backend.retrieve_messages, queue, **kwargs)
        self.stats.add("received", len(messages))
        held: set[str] = set()  # FIFO groups with a message coming back
        for message in messages:
            if message.group_id is not None and message.group_id in held:
                await asyncio.to_thread(self._release, [message])
                continue
            if not await self._process(message, queue) and message.group_id is not None:
                held.add(message.group_id)
        return len(messages)

    async def consume_loop(  # type: ignore[override]
        self,
        queue_name: str,
        on_exception: Callable[[Exception], Any] | None = None,
        after_consume: Callable[[], Any] | None = None,
        *,
        concurrency: int = 1,
        install_signal_handlers: bool = True,
        **kwargs: Any,
    ) -> None:
        """Consume until :meth:`stop`; up to ``concurrency`` messages are processed at once.

        Messages of one FIFO group are processed in order. On stop, messages received but not
        started are given back; the ones in hand are finished and settled. Cancelling the task
        stops at once (unsettled messages come back after the visibility timeout).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._stop.clear()
        self._on_exception = on_exception
        queue = await asyncio.to_thread(self._backend.get_queue, queue_name)
        if self._backend.loop_wait_seconds is not None:
            kwargs.setdefault("wait_seconds", self._backend.loop_wait_seconds)
        slots = asyncio.Semaphore(concurrency)
        tails: dict[str, asyncio.Task[bool]] = {}
        running: set[asyncio.Task[bool]] = set()
        failures = 0
        handled = self._add_signal_handlers() if install_signal_handlers else []
        try:
            while not self._stop.is_set():
                await asyncio.to_thread(self._wait_for_cache)
                if self._stop.is_set():
                    break
                kwargs["max_messages"] = min(10, concurrency)
                messages, failures = await asyncio.to_thread(self._receive, queue, kwargs, failures)
                in_batch: dict[str, asyncio.Task[bool]] = {}
                for message in messages:
                    await slots.acquire()
                    group = message.group_id
                    # Chain on the group's previous message, even a finished one of this batch:
                    # if it is coming back, this one must come back too.
                    before = (in_batch.get(group) or tails.get(group)) if group else None
                    task = asyncio.create_task(self._guarded(message, queue, before, slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    if group is not None:
                        in_batch[group] = tails[group] = task
                        task.add_done_callback(_forget(tails, group))
                if after_consume is not None:
                    after_consume()
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            loop = asyncio.get_running_loop()
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _add_signal_handlers(self) -> list[signal.Signals]:
        if threading.current_thread() is not threading.main_thread():
            return []
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                continue
            handled.append(sig)
        return handled

    async def _guarded(
        self,
        message: Message,
        queue: QueueWrapper,
        before: asyncio.Task[bool] | None,
        slots: asyncio.Semaphore,
    ) -> bool:
        """Process one message; returns whether it is settled for good."""
        try:
            go_ahead = before is None or await before  # keep FIFO groups in order
            self.stats.add("received")
            if self._stop.is_set() or not go_ahead:
                await asyncio.to_thread(self._release, [message])
                return False
            return await self._process(message, queue)
        except Exception as exc:
            logger.exception("settling message %s failed", message.message_id)
            self._notify(exc)
            return False
        finally:
            slots.release()

    async def _process(self, message: Message, queue: QueueWrapper) -> bool:
        verdict = await self._decide(message, queue.name)
        return await asyncio.to_thread(self._apply, verdict, message, queue.name)

    async def _decide(self, message: Message, queue_name: str) -> Verdict:
        if not self._backend.holds(message):
            return ABANDON
        decoded = decode(message, self._registry)
        if not isinstance(decoded, Decoded):
            self.stats.add("poison")
            logger.error(
                "message %s on %s cannot be decoded: %s",
                message.message_id,
                queue_name,
                decoded.reason,
            )
            return poison_verdict(decoded)
        consumers = self._route.select(decoded.payload, message.manifest)
        if not consumers:
            return ACK
        with processing(message):
            results = [
                await self._run_async(c, decoded.payload, message, queue_name) for c in consumers
            ]
        return settle(
            results,
            message.attempt,
            self._policy,
            always_ack=self._always_ack,
            rng=self._rng,
            busy_delay=self._lease,
        )

    async def _run_async(
        self, consumer: Consumer, payload: Any, message: Message, queue_name: str
    ) -> ConsumerResult:
        if self._cache is not None:
            early, key = await asyncio.to_thread(self._claim, consumer, message, queue_name)
            if early is not None:
                return early
        else:
            key = None
        policy = consumer.failure_policy or self._policy
        error: Exception | None = None
        for _ in range(policy.immediate_retries + 1):
            try:
                result = consumer.process(payload)
                if inspect.isawaitable(result):
                    await _awaited(result)
            except Exception as exc:
                error = exc
                continue
            error = None
            break
        if key is not None:
            return await asyncio.to_thread(self._finish, consumer, message, queue_name, key, error)
        return self._finish(consumer, message, queue_name, None, error)


def _forget(
    tails: dict[str, asyncio.Task[bool]], group: str
) -> Callable[[asyncio.Task[bool]], None]:
    def forget(task: asyncio.Task[bool]) -> None:
        if tails.get(group) is task:
            tails.pop(group, None)

    return forget


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


__all__ = ["AsyncMessageDispatcher", "AsyncQueuePublisher", "AsyncTopicPublisher"]
