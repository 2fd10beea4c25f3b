"""The threaded dispatcher: the dispatch engine driven with blocking calls and worker threads.

A :class:`MessageDispatcher` receives messages from a queue, decodes each with the serializer
its id names, hands it to every attached consumer that accepts it, and settles it: it is
acknowledged only when every accepting consumer succeeded; otherwise it is retried according to
the :class:`~melange.dispatch.policy.FailurePolicy` and finally dead-lettered with the reason. A
message that cannot be decoded is dead-lettered at once. No failure stops the consume loop.

With a :class:`~melange.deduplication.cache.DeduplicationCache`, a consumer that already
processed a message skips it on redelivery (which counts as success).

Every decision is the :class:`~melange.dispatch.engine.Engine`'s; this module performs the
effects it asks for, and schedules messages on worker threads.
"""

from __future__ import annotations

import logging
import queue as queue_module
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from types import FrameType
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.deduplication.cache import DeduplicationCache
from melange.dispatch.base import DispatcherBase
from melange.dispatch.engine import Engine, Step
from melange.dispatch.groups import GroupOrder
from melange.dispatch.perform import BlockingPerformer
from melange.dispatch.stats import DispatcherStats
from melange.models import Message, QueueWrapper
from melange.serializers.registry import SerializerSource

logger = logging.getLogger("melange.dispatcher")

#: Messages one receive asks for, at most, when several workers share the batch.
_BATCH_FOR_WORKERS = 10


def run_sync(step: Step[Any], perform: Callable[[Any], Any]) -> Any:
    """Drive an engine step to its end, performing each effect with ``perform``."""
    try:
        effect = next(step)
        while True:
            try:
                result = perform(effect)
            except BaseException as exc:
                effect = step.throw(exc)
            else:
                effect = step.send(result)
    except StopIteration as done:
        return done.value


class _Workers:
    """A fixed set of daemon worker threads.

    Daemon threads, unlike ``ThreadPoolExecutor``'s, let a second signal end the process
    while a handler hangs: nothing waits for them at interpreter exit.
    """

    def __init__(self, count: int) -> None:
        self._queue: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"melange-worker_{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # _work catches everything; this is a last resort
                future.set_exception(exc)

    def shutdown(self, wait: bool) -> None:
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class MessageDispatcher(DispatcherBase):
    __doc__ = DispatcherBase.__doc__

    def _setup_driver(self) -> None:
        fetch = self._claim_check.fetch if self._claim_check is not None else None
        self._perform = BlockingPerformer(
            self._backend, self._cache, self._leases, self._stop, fetch
        )

    @property
    def backend(self) -> MessagingBackend:
        """The backend messages are consumed from."""
        return self._backend

    def _drive(self, step: Step[Any]) -> Any:
        return run_sync(step, self._perform)

    # -- consuming --------------------------------------------------------------------------

    def consume_event(self, queue_name: str, **kwargs: Any) -> int:
        """Receive one batch from ``queue_name`` and dispatch it; returns its size.

        Keyword arguments go to the backend's ``retrieve_messages`` (``max_messages``,
        ``wait_seconds``). Backend errors propagate.
        """
        queue = self._backend.get_queue(queue_name)
        messages = self._backend.retrieve_messages(queue, **kwargs)
        self.dispatch(messages, queue_name)
        return len(messages)

    def dispatch(self, messages: Sequence[Message], queue_name: str) -> None:
        """Dispatch ``messages``, received from ``queue_name`` by this dispatcher's backend,
        and settle them (for tools that receive messages themselves)."""
        self._drive(self._engine.dispatch(messages, queue_name))

    def consume_loop(
        self,
        queue_name: str,
        on_exception: Callable[[Exception], Any] | None = None,
        after_consume: Callable[[], Any] | None = None,
        *,
        workers: int = 1,
        install_signal_handlers: bool = True,
        **kwargs: Any,
    ) -> None:
        """Consume ``queue_name`` until :meth:`stop` is called or the process gets SIGINT/SIGTERM.

        On stop it finishes and settles the messages in hand, gives back the ones it received
        but had not started, and returns. A second signal stops at once. Broker errors are
        logged, passed to ``on_exception`` and retried with backoff; they never end the loop.
        A consumer raising ``SystemExit`` or ``KeyboardInterrupt`` stops the loop the same
        way, and the exception is raised once the messages in hand are settled.

        Args:
            on_exception: Called with every exception: consumer failures and backend errors.
            after_consume: Called after each received batch.
            workers: Messages processed at once, on threads. Messages of one FIFO group stay
                in order.
            install_signal_handlers: Handle SIGINT/SIGTERM (only possible in the main thread).
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._start_loop(queue_name, on_exception, kwargs)
        queue = self._backend.get_queue(queue_name)
        logger.info("consuming %s", queue_name, extra={"queue": queue_name, "workers": workers})
        with self._signals(install_signal_handlers):
            if workers == 1:
                self._loop_serial(queue, after_consume, kwargs)
            else:
                self._loop_pool(queue, after_consume, workers, kwargs)
        logger.info("stopped consuming %s", queue_name, extra={"queue": queue_name})
        if self._interrupted is not None:
            raise self._interrupted

    def _loop_serial(
        self, queue: QueueWrapper, after_consume: Callable[[], Any] | None, options: dict[str, Any]
    ) -> None:
        engine = self._engine
        while not self._stop.is_set():
            messages = self._drive(engine.receive(queue, options))
            if messages:
                try:
                    self._drive(engine.dispatch(messages, queue.name, watched=True))
                except (Exception, SystemExit, KeyboardInterrupt) as exc:
                    self._settling_failed(queue.name, exc)
            if after_consume is not None:
                after_consume()

    def _loop_pool(
        self,
        queue: QueueWrapper,
        after_consume: Callable[[], Any] | None,
        workers: int,
        options: dict[str, Any],
    ) -> None:
        slots = threading.Semaphore(workers)
        order: GroupOrder[Future[bool]] = GroupOrder()
        pool = _Workers(workers)
        drained = False
        try:
            while not self._stop.is_set():
                # Receive only when a worker is free, so in-flight work stays bounded.
                if not slots.acquire(timeout=0.5):
                    continue
                slots.release()
                options["max_messages"] = min(_BATCH_FOR_WORKERS, workers)
                messages = self._drive(self._engine.receive(queue, options))
                order.new_batch()
                for message in messages:
                    slots.acquire()
                    group = message.group_id
                    # Wait for the group's previous message (see Engine.may_go_ahead).
                    before, same_batch = order.before(group)
                    future = pool.submit(self._work, message, queue.name, before, same_batch, slots)
                    if group is not None:
                        order.started(group, future)
                        future.add_done_callback(_finished(order, group))
                if after_consume is not None:
                    after_consume()
            drained = True
        finally:
            # After a stop, finish the messages in hand; after a second signal (an exception
            # here), do not wait for handlers that may hang.
            pool.shutdown(wait=drained)

    def _work(
        self,
        message: Message,
        queue_name: str,
        before: Future[bool] | None,
        same_batch: bool,
        slots: threading.Semaphore,
    ) -> bool:
        """Process one message on a worker; returns whether it is settled for good."""
        try:
            go_ahead = before is None or Engine.may_go_ahead(before.result(), same_batch)
            return bool(self._drive(self._engine.process(message, queue_name, go_ahead)))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            self._settling_failed(queue_name, exc, message.message_id)
            return False
        finally:
            slots.release()

    # -- signals ----------------------------------------------------------------------------

    @contextmanager
    def _signals(self, install: bool) -> Iterator[None]:
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[signal.Signals, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            self._signal_received(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _finished(order: GroupOrder[Future[bool]], group: str) -> Callable[[Future[bool]], None]:
    return lambda future: order.finished(group, future)


class SimpleMessageDispatcher(MessageDispatcher):
    """A dispatcher for a single consumer.

    Args:
        wrapped_consumer: The consumer.
        serializer_registry: As for :class:`MessageDispatcher`.
        cache: As for :class:`MessageDispatcher`.
        always_ack: As for :class:`MessageDispatcher`.
        backend: As for :class:`MessageDispatcher`.
        **kwargs: Further options of :class:`MessageDispatcher`.
    """

    def __init__(
        self,
        wrapped_consumer: Consumer,
        serializer_registry: SerializerSource | None = None,
        cache: DeduplicationCache | None = None,
        always_ack: bool = False,
        backend: MessagingBackend | None = None,
        **kwargs: Any,
    ) -> None:
        if not callable(getattr(wrapped_consumer, "process", None)):
            raise TypeError(
                "SimpleMessageDispatcher takes the consumer first, then the serializer(s): "
                f"got {type(wrapped_consumer).__name__} as the consumer"
            )
        super().__init__(
            serializer_registry,
            cache=cache,
            backend=backend,
            always_ack=always_ack,
            consumers=[wrapped_consumer],
            **kwargs,
        )


#: The name the original documentation uses.
ConsumerHandler = MessageDispatcher

__all__ = [
    "ConsumerHandler",
    "DispatcherStats",
    "MessageDispatcher",
    "SimpleMessageDispatcher",
    "run_sync",
]
