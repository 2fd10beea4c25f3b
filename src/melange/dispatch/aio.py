"""The asyncio dispatcher: the dispatch engine driven on an event loop.

The same :class:`~melange.dispatch.engine.Engine` as the threaded dispatcher makes every
decision; this module only performs its effects with ``await``. Consumers may be ``async``: a
consumer whose ``on_message`` (or ``@consumer`` method, or ``process``) is a coroutine
function is awaited on the loop; plain consumers run on a bounded pool of worker threads (one
per unit of ``concurrency``), never on the loop, in the context of the message. The leases of
messages in hand and of deduplication claims are renewed as with the threaded dispatcher.

It talks to asynchronous contracts only: an
:class:`~melange.backends.async_interfaces.AsyncMessagingBackend` and an
:class:`~melange.deduplication.async_cache.AsyncDeduplicationCache` are awaited natively; a
blocking backend or cache is adapted (``as_async``, ``as_async_cache``), its calls running in
worker threads (or on the loop for one that never blocks, like the in-memory backend)::

    dispatcher = AsyncMessageDispatcher(JsonSerializer(), backend=backend,
                                        consumers=[Consumer(on_message=handle_order)])
    await dispatcher.consume_loop("orders", concurrency=8)
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import CoroutineType
from typing import Any

from melange.backends.async_interfaces import (
    BlockingBackendAdapter,
    as_async,
)
from melange.consumers import Consumer, is_coroutine_consumer
from melange.deduplication.async_cache import BlockingCacheAdapter, as_async_cache
from melange.dispatch.base import DispatcherBase
from melange.dispatch.effects import Invoke, Sleep
from melange.dispatch.engine import Engine, Step
from melange.dispatch.groups import GroupOrder
from melange.dispatch.leases import Heartbeat, LoopBridge
from melange.dispatch.perform import AsyncPerformer
from melange.models import Message, QueueWrapper

logger = logging.getLogger("melange.dispatcher")

_BATCH_FOR_WORKERS = 10


async def run_async(
    step: Step[Any],
    inline: dict[type, Callable[[Any], Any]],
    awaited: dict[type, Callable[[Any], Awaitable[Any]]],
) -> Any:
    """Drive an engine step to its end: effects in ``inline`` are performed at once, the
    others are awaited."""
    try:
        effect = next(step)
        while True:
            kind = type(effect)
            try:
                fn = inline.get(kind)
                result = fn(effect) if fn is not None else await awaited[kind](effect)
            except BaseException as exc:
                effect = step.throw(exc)
            else:
                effect = step.send(result)
    except StopIteration as done:
        return done.value


class AsyncMessageDispatcher(DispatcherBase):
    """``async`` twin of :class:`~melange.dispatch.threaded.MessageDispatcher`.

    Takes the same arguments; ``backend`` may also be an
    :class:`~melange.backends.async_interfaces.AsyncMessagingBackend` and ``cache`` an
    :class:`~melange.deduplication.async_cache.AsyncDeduplicationCache`, awaited natively.
    :meth:`consume_event` and :meth:`consume_loop` are coroutines; :meth:`stop` may be called
    from any thread or task.
    """

    _takes_async = True

    def _adapt(self) -> None:
        # One contract for the driver, whatever was given.
        self._async_backend = as_async(self._given_backend)
        cache = self._given_cache
        self._async_cache = as_async_cache(cache) if cache is not None else None
        self._bridge = LoopBridge()

    def _heartbeat(self) -> Heartbeat:
        backend = self._async_backend
        if isinstance(backend, BlockingBackendAdapter):
            # A blocking backend's leases are renewed from the heartbeat's thread, as under the
            # threaded dispatcher: no detour through a loop that may be busy.
            return Heartbeat.for_backend(backend.backend)
        return Heartbeat(
            self._bridge.renewal(backend.extend_visibility), backend.visibility_timeout_for
        )

    def _setup_driver(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._coroutine_handlers: dict[tuple[Consumer, type], bool] = {}
        cache = self._async_cache
        renew_claim: Callable[[str, float], Any] | None = None
        if isinstance(cache, BlockingCacheAdapter):
            renew_claim = cache.cache.renew  # from the heartbeat's thread, as above
        elif cache is not None:
            renew_claim = self._bridge.renewal(cache.renew)
        performer = AsyncPerformer(
            self._async_backend,
            cache,
            self._leases,
            renew_claim,
            self._bridge.attach,
            self._claim_check.fetch if self._claim_check is not None else None,
        )
        self._inline = performer.inline
        self._awaited: dict[type, Callable[[Any], Awaitable[Any]]] = {
            **performer.awaited,
            Invoke: self._invoke,
            Sleep: self._sleep,
        }

    async def _drive(self, step: Step[Any]) -> Any:
        return await run_async(step, self._inline, self._awaited)

    def _invoke(self, effect: Invoke) -> Awaitable[Any]:
        """What performing ``effect`` awaits: an async handler's own coroutine (no wrapper
        coroutine made per message), else a run of the plain consumer on a worker thread."""
        consumer, payload = effect.consumer, effect.payload
        # Whether a handler is a coroutine function depends on the consumer and the type of
        # the payload only (a single-dispatch consumer picks its handler by type): asked
        # once per pair rather than inspected for every message.
        try:
            key = (consumer, type(payload))
            coroutine = self._coroutine_handlers.get(key)
            if coroutine is None:
                coroutine = is_coroutine_consumer(consumer, payload)
                self._coroutine_handlers[key] = coroutine
        except TypeError:  # a consumer class that made itself unhashable
            coroutine = is_coroutine_consumer(consumer, payload)
        if not coroutine:
            return self._invoke_in_thread(consumer, payload)
        result = consumer.process(payload)
        if type(result) is CoroutineType:
            return result
        return _awaited_if_awaitable(result)

    async def _invoke_in_thread(self, consumer: Consumer, payload: Any) -> None:
        # Plain consumers run on the worker threads, in this message's context.
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(1, thread_name_prefix="melange-worker")
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(executor, context.run, consumer.process, payload)
        await _awaited_if_awaitable(result)

    async def _sleep(self, effect: Sleep) -> None:
        # Short naps so that stop() from any thread ends the wait soon.
        deadline = asyncio.get_running_loop().time() + effect.seconds
        while not self._stop.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.05))

    # -- consuming --------------------------------------------------------------------------

    async def consume_event(self, queue_name: str, **kwargs: Any) -> int:
        """Receive one batch from ``queue_name`` and dispatch it; returns its size."""
        backend = self._async_backend
        queue = await backend.get_queue(queue_name)
        messages = await backend.retrieve_messages(queue, **kwargs)
        await self.dispatch(messages, queue_name)
        return len(messages)

    async def dispatch(self, messages: list[Message], queue_name: str) -> None:
        """Dispatch ``messages``, received from ``queue_name`` by this dispatcher's backend,
        and settle them."""
        await self._drive(self._engine.dispatch(messages, queue_name))

    async def consume_loop(
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
        stops at once (unsettled messages come back after the visibility timeout). A consumer
        raising ``SystemExit`` or ``KeyboardInterrupt`` stops the loop, which raises it once
        the messages in hand are settled.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._start_loop(queue_name, on_exception, kwargs)
        queue = await self._async_backend.get_queue(queue_name)
        previous_executor = self._executor
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="melange-worker")
        handled = self._add_signal_handlers() if install_signal_handlers else []
        logger.info("consuming %s", queue_name, extra={"queue": queue_name, "workers": concurrency})
        try:
            if concurrency == 1:
                await self._loop_serial(queue, after_consume, kwargs)
            else:
                await self._loop_tasks(queue, after_consume, concurrency, kwargs)
        finally:
            loop = asyncio.get_running_loop()
            for sig in handled:
                loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False)
            self._executor = previous_executor
        logger.info("stopped consuming %s", queue_name, extra={"queue": queue_name})
        if self._interrupted is not None:
            raise self._interrupted

    async def _loop_serial(
        self, queue: QueueWrapper, after_consume: Callable[[], Any] | None, options: dict[str, Any]
    ) -> None:
        engine = self._engine
        while not self._stop.is_set():
            messages = await self._drive(engine.receive(queue, options))
            if messages:
                try:
                    await self._drive(engine.dispatch(messages, queue.name, watched=True))
                except (Exception, SystemExit, KeyboardInterrupt) as exc:
                    self._settling_failed(queue.name, exc)
            if after_consume is not None:
                after_consume()

    async def _loop_tasks(
        self,
        queue: QueueWrapper,
        after_consume: Callable[[], Any] | None,
        concurrency: int,
        options: dict[str, Any],
    ) -> None:
        slots = asyncio.Semaphore(concurrency)
        order: GroupOrder[asyncio.Task[bool]] = GroupOrder()
        running: set[asyncio.Task[bool]] = set()
        try:
            while not self._stop.is_set():
                # Receive only when a task slot is free, so in-flight work stays bounded.
                await slots.acquire()
                slots.release()
                options["max_messages"] = min(_BATCH_FOR_WORKERS, concurrency)
                messages = await self._drive(self._engine.receive(queue, options))
                order.new_batch()
                for message in messages:
                    await slots.acquire()
                    group = message.group_id
                    # Wait for the group's previous message (see Engine.may_go_ahead).
                    before, same_batch = order.before(group)
                    task = asyncio.create_task(
                        self._work(message, queue.name, before, same_batch, slots)
                    )
                    running.add(task)
                    task.add_done_callback(running.discard)
                    if group is not None:
                        order.started(group, task)
                        task.add_done_callback(_finished(order, group))
                if after_consume is not None:
                    after_consume()
                if not messages:
                    await asyncio.sleep(0)  # let finished tasks release their slots
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _work(
        self,
        message: Message,
        queue_name: str,
        before: asyncio.Task[bool] | None,
        same_batch: bool,
        slots: asyncio.Semaphore,
    ) -> bool:
        """Process one message in its own task; returns whether it is settled for good."""
        try:
            go_ahead = before is None or Engine.may_go_ahead(await before, same_batch)
            return bool(await self._drive(self._engine.process(message, queue_name, go_ahead)))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            self._settling_failed(queue_name, exc, message.message_id)
            return False
        finally:
            slots.release()

    def _add_signal_handlers(self) -> list[signal.Signals]:
        if threading.current_thread() is not threading.main_thread():
            return []
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._signal_received, sig)
            except (NotImplementedError, RuntimeError):
                continue
            handled.append(sig)
        return handled

    def close(self) -> None:
        """Stop the lease renewal thread and the worker threads (the backend stays open)."""
        super().close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)


async def _awaited_if_awaitable(result: Any) -> None:
    """Await what a consumer returned when it is awaitable."""
    if inspect.isawaitable(result):
        await result


def _finished(
    order: GroupOrder[asyncio.Task[bool]], group: str
) -> Callable[[asyncio.Task[bool]], None]:
    return lambda task: order.finished(group, task)


__all__ = ["AsyncMessageDispatcher", "run_async"]
