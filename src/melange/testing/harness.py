"""The test harness: record what a service published, consumed, retried and dead-lettered.

A :class:`Harness` watches every publisher and every dispatcher (threaded or asyncio) of the
process while it is open, through the publishers' publish listeners and the dispatchers'
middleware, on any backend. Tests then read like the behaviour they check: "when the payment
service gets ``OrderCreated``, it publishes ``OrderResponse``"::

    with Harness(serializers=SERIALIZER) as harness:
        dispatcher = create_dispatcher(harness.backend)
        harness.publish_to_topic("orders", OrderCreated("ord-1", "A-1", "alice", 12_50))
        harness.run(dispatcher, "payment-service")
        harness.consumed(OrderCreated, reference="A-1")
        harness.published(OrderResponse, reference="A-1")

An assertion returns the matching record, or raises ``AssertionError`` listing what happened
instead and why each does not match. The ``wait_until_*`` assertions wait (up to a timeout)
for a flow running on other threads or tasks, and have ``async`` twins.

Without a backend, the harness makes an in-memory one on a :class:`FakeClock`; then
:meth:`Harness.run` skips the delays of retries and delayed publishes instead of waiting for
them, so a test of a three-attempt backoff takes milliseconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, TypeVar

from melange.aio import AsyncQueuePublisher, AsyncTopicPublisher
from melange.backends.async_interfaces import AsyncMessagingBackend, BlockingBackendAdapter
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatch.aio import AsyncMessageDispatcher
from melange.dispatch.base import DispatcherBase
from melange.dispatch.decisions import Decoded, Outcome, Verdict, decode
from melange.dispatch.middleware import (
    Middleware,
    add_process_middleware,
    remove_process_middleware,
)
from melange.dispatch.threaded import MessageDispatcher
from melange.models import Message
from melange.publishers import (
    Publication,
    QueuePublisher,
    TopicPublisher,
    add_publish_listener,
    remove_publish_listener,
)
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry, SerializerSource
from melange.testing.clock import FakeClock
from melange.testing.records import (
    ConsumedMessage,
    PublishedMessage,
    Query,
    Record,
    SettleAction,
    SettledMessage,
    explain,
)

R = TypeVar("R", bound=Record)

#: Set while the harness itself publishes a test's input (kept apart from what services publish).
_sending_input: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "melange_harness_input", default=False
)

#: Seconds a receive waits, when driving a dispatcher, on a backend that is not in memory.
_POLL_SECONDS = 0.2


class _Observer(Middleware):
    """The harness's eyes on dispatchers (kept out of the harness's own public interface)."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    def consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        self._harness._consumer_finished(message, consumer, outcome, error)

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        self._harness._message_settled(message, queue, verdict)


class Harness:
    """Records what the services of a test publish and consume; asserts on it.

    Open it (``with Harness() as harness:``, or :meth:`start`) before the services under
    test publish or consume; it watches every publisher and dispatcher of the process until
    closed.

    Args:
        backend: The backend the test runs on; by default a fresh
            :class:`~melange.backends.memory.InMemoryMessagingBackend` on :attr:`clock`.
        clock: The clock ``backend`` counts delays on, when it is a fake one the harness may
            move forward (the in-memory backend made with ``clock=``). Without it, and with a
            backend given, delays take the time they take.
        serializers: What the harness publishes test inputs with, and decodes messages it
            did not see published with (default JSON).
    """

    def __init__(
        self,
        backend: MessagingBackend | AsyncMessagingBackend | None = None,
        *,
        clock: FakeClock | None = None,
        serializers: SerializerSource | None = None,
    ) -> None:
        #: The clock records are timed with; the harness moves it forward over delays when
        #: the backend counts on it (see :meth:`run`).
        self.clock = clock or FakeClock()
        self.fake_time = clock is not None or backend is None
        self.backend: MessagingBackend | AsyncMessagingBackend = (
            backend if backend is not None else InMemoryMessagingBackend(clock=self.clock)
        )
        self._serializers = SerializerRegistry.coerce(serializers or JsonSerializer())
        self._observer = _Observer(self)
        self._lock = threading.Condition()
        self._published: list[PublishedMessage] = []
        self._inputs: list[PublishedMessage] = []
        self._consumed: list[ConsumedMessage] = []
        self._settled: list[SettledMessage] = []
        # Message id -> payload, from the publishes seen: what a consumer of it is given.
        self._payloads: dict[str, Any] = {}
        # (queue, message id) -> when a message given back (retried, released) is due again.
        self._returning: dict[tuple[str, str], float] = {}
        # Message id -> the consumptions of it whose queue is told when it is settled.
        self._queueless: dict[str, list[int]] = {}
        # When delayed publishes become visible.
        self._delayed: list[float] = []
        self._open = False
        self._background: list[tuple[DispatcherBase, threading.Thread]] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Harness:
        """Start watching publishers and dispatchers; returns the harness."""
        if not self._open:
            add_publish_listener(self._on_publication)
            add_process_middleware(self._observer)
            self._open = True
        return self

    def close(self) -> None:
        """Stop the dispatchers started with :meth:`running` and stop watching."""
        for dispatcher, thread in reversed(self._background):
            dispatcher.stop()
            thread.join(10.0)
            dispatcher.close()
        self._background.clear()
        if self._open:
            remove_publish_listener(self._on_publication)
            remove_process_middleware(self._observer)
            self._open = False

    def __enter__(self) -> Harness:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Harness: {len(self._published)} published, {len(self._consumed)} consumed, "
            f"{len(self._settled)} settled>"
        )

    @property
    def serializers(self) -> SerializerRegistry:
        """What test inputs are published with and unseen messages decoded with."""
        return self._serializers

    @serializers.setter
    def serializers(self, serializers: SerializerSource) -> None:
        self._serializers = SerializerRegistry.coerce(serializers)

    def clear(self) -> None:
        """Forget everything recorded so far (to assert on what happens next only)."""
        with self._lock:
            self._published.clear()
            self._inputs.clear()
            self._consumed.clear()
            self._settled.clear()
            self._queueless.clear()

    # -- what was recorded ------------------------------------------------------------------

    @property
    def published_messages(self) -> list[PublishedMessage]:
        """Every message the services published, oldest first (test inputs excluded)."""
        with self._lock:
            return list(self._published)

    @property
    def inputs(self) -> list[PublishedMessage]:
        """The messages the test published with :meth:`publish_to_topic` and
        :meth:`publish_to_queue`."""
        with self._lock:
            return list(self._inputs)

    @property
    def consumed_messages(self) -> list[ConsumedMessage]:
        """Every call of a consumer with a message, and its outcome, oldest first."""
        with self._lock:
            return list(self._consumed)

    @property
    def settled_messages(self) -> list[SettledMessage]:
        """Every settlement of a message by a dispatcher, oldest first."""
        with self._lock:
            return list(self._settled)

    def _record(self, into: list[R], record: R) -> None:
        with self._lock:
            into.append(record)
            self._lock.notify_all()

    def _on_publication(self, publication: Publication) -> None:
        message = publication.message
        record = PublishedMessage(
            message,
            publication.payload,
            self.clock(),
            publication.destination,
            publication.kind,
            publication.delay_seconds,
        )
        with self._lock:
            self._payloads[message.message_id] = publication.payload
            if publication.delay_seconds:
                self._delayed.append(record.at + publication.delay_seconds)
        self._record(self._inputs if _sending_input.get() else self._published, record)

    def _payload_of(self, message: Message) -> Any:
        with self._lock:
            if message.message_id in self._payloads:
                return self._payloads[message.message_id]
        decoded = decode(message, self._serializers)
        return decoded.payload if isinstance(decoded, Decoded) else None

    def _consumer_finished(
        self, message: Message, consumer: Consumer, outcome: Outcome, error: BaseException | None
    ) -> None:
        queue = getattr(message.metadata, "queue", None)
        record = ConsumedMessage(
            message,
            self._payload_of(message),
            self.clock(),
            queue=queue if isinstance(queue, str) else "",
            consumer=consumer.name,
            outcome=outcome.value,
            error=error,
        )
        with self._lock:
            if not record.queue:
                self._queueless.setdefault(message.message_id, []).append(len(self._consumed))
            self._consumed.append(record)
            self._lock.notify_all()

    def _message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        now = self.clock()
        action: SettleAction = verdict.action.value
        record = SettledMessage(
            message,
            self._payload_of(message),
            now,
            queue=queue,
            action=action,
            delay=verdict.delay,
            reason=verdict.reason,
            exception_type=verdict.exception_type,
            consumer=verdict.consumer,
        )
        with self._lock:
            key = (queue, message.message_id)
            if action in ("retry", "release"):
                self._returning[key] = now + verdict.delay
            else:
                self._returning.pop(key, None)
        # A consumption knows its queue only when the backend's receipt names it: fill it in.
        with self._lock:
            for index in self._queueless.pop(message.message_id, ()):
                self._consumed[index] = _with_queue(self._consumed[index], queue)
        self._record(self._settled, record)

    # -- test inputs ------------------------------------------------------------------------

    def publish_to_topic(self, topic: str, data: Any, **options: Any) -> Message:
        """Publish ``data`` to ``topic`` as the test's input (recorded in :attr:`inputs`, not
        among what the services published); ``options`` go to ``TopicPublisher.publish``."""
        publisher = TopicPublisher(self._serializers, self._blocking_backend())
        token = _sending_input.set(True)
        try:
            return publisher.publish(topic, data, **options)
        finally:
            _sending_input.reset(token)

    def publish_to_queue(self, queue: str, data: Any, **options: Any) -> Message:
        """Publish ``data`` to ``queue`` as the test's input (see :meth:`publish_to_topic`)."""
        publisher = QueuePublisher(self._serializers, self._blocking_backend())
        token = _sending_input.set(True)
        try:
            return publisher.publish(queue, data, **options)
        finally:
            _sending_input.reset(token)

    async def publish_to_topic_async(self, topic: str, data: Any, **options: Any) -> Message:
        """``async`` twin of :meth:`publish_to_topic` (for an asynchronous backend)."""
        token = _sending_input.set(True)
        try:
            publisher = AsyncTopicPublisher(self._serializers, self.backend)
            return await publisher.publish(topic, data, **options)
        finally:
            _sending_input.reset(token)

    async def publish_to_queue_async(self, queue: str, data: Any, **options: Any) -> Message:
        """``async`` twin of :meth:`publish_to_queue` (for an asynchronous backend)."""
        token = _sending_input.set(True)
        try:
            publisher = AsyncQueuePublisher(self._serializers, self.backend)
            return await publisher.publish(queue, data, **options)
        finally:
            _sending_input.reset(token)

    def _blocking_backend(self) -> MessagingBackend:
        backend = self.backend
        if isinstance(backend, MessagingBackend):
            return backend
        raise TypeError(
            f"{type(backend).__name__} is asynchronous: publish with the *_async methods"
        )

    # -- assertions -------------------------------------------------------------------------

    def published(
        self,
        kind: type | str | None = None,
        /,
        *,
        to: str | None = None,
        times: int | None = None,
        headers: Mapping[str, str] | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> PublishedMessage:
        """Assert that a service published a ``kind`` message (a class, a manifest, or
        ``None`` for any) whose fields equal ``fields``, to the queue or topic ``to``,
        carrying ``headers``; ``times`` asks for exactly that many such publishes.

        Returns the first match; raises ``AssertionError`` listing every publish and why it
        does not match. A field named like one of these options (``to``, ``times``, ...)
        goes in ``where``, a mapping of field values.
        """
        query = Query(kind, {**(where or {}), **fields}, headers or {}, to)
        return self._assert(query, "a publish", self._published, "published", times)[0]

    def not_published(
        self,
        kind: type | str | None = None,
        /,
        *,
        to: str | None = None,
        headers: Mapping[str, str] | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """Assert that no service published such a message (arguments as for
        :meth:`published`)."""
        query = Query(kind, {**(where or {}), **fields}, headers or {}, to)
        self._assert(query, "a publish", self._published, "published", 0)

    def consumed(
        self,
        kind: type | str | None = None,
        /,
        *,
        queue: str | None = None,
        consumer: str | None = None,
        times: int | None = None,
        failed: bool | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> ConsumedMessage:
        """Assert that a consumer was given a ``kind`` message with these ``fields`` (from
        ``queue``, by the consumer named ``consumer``); ``failed`` asks that it failed
        (``True``) or succeeded (``False``); ``times`` counts the calls (each delivery of a
        retried message is one)."""
        extra: list[tuple[str, Callable[[Any], str | None]]] = []
        if consumer is not None:
            extra.append((f"consumer {consumer}", _attribute_is("consumer", consumer)))
        if failed is not None:
            wanted = "failed" if failed else "succeeded"
            extra.append((wanted, _attribute_is("outcome", wanted)))
        query = Query(kind, {**(where or {}), **fields}, {}, queue, extra)
        return self._assert(query, "a consumption", self._consumed, "consumed", times)[0]

    def retried(
        self,
        kind: type | str | None = None,
        /,
        *,
        queue: str | None = None,
        times: int | None = None,
        reason: str | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> SettledMessage:
        """Assert that a ``kind`` message with these ``fields`` was given back to be
        delivered again after a failure (``times``: exactly that many times; ``reason``: a
        text the failure's description contains, e.g. the exception's name)."""
        return self._settlement("retry", kind, queue, times, reason, {**(where or {}), **fields})

    def dead_lettered(
        self,
        kind: type | str | None = None,
        /,
        *,
        queue: str | None = None,
        reason: str | None = None,
        times: int | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> SettledMessage:
        """Assert that a ``kind`` message with these ``fields`` was dead-lettered from
        ``queue``; ``reason`` is a text the reason contains (it names the exception, and says
        ``gave up after N attempt(s)`` or ``non-retryable exception``)."""
        fields = {**(where or {}), **fields}
        return self._settlement("dead_letter", kind, queue, times, reason, fields)

    def acknowledged(
        self,
        kind: type | str | None = None,
        /,
        *,
        queue: str | None = None,
        times: int | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> SettledMessage:
        """Assert that a ``kind`` message with these ``fields`` was acknowledged (handled for
        good, or accepted by no consumer)."""
        return self._settlement("ack", kind, queue, times, None, {**(where or {}), **fields})

    def _settlement(
        self,
        action: str,
        kind: type | str | None,
        queue: str | None,
        times: int | None,
        reason: str | None,
        fields: Mapping[str, Any],
    ) -> SettledMessage:
        label = {"ack": "an acknowledgement", "retry": "a retry"}.get(action, "a dead-letter")
        extra: list[tuple[str, Callable[[Any], str | None]]] = [
            ("", _attribute_is("action", action))
        ]
        if reason is not None:
            extra.append((f"reason containing {reason!r}", _reason_contains(reason)))
        query = Query(kind, fields, {}, queue, extra)
        return self._assert(query, label, self._settled, "settled", times)[0]

    def _assert(
        self,
        query: Query,
        verb: str,
        source: list[R],
        title: str,
        times: int | None,
    ) -> list[R]:
        """The records of ``source`` matching ``query`` (at least one, or exactly
        ``times``); raises ``AssertionError`` explaining every record otherwise."""
        with self._lock:
            records = list(source)
        pairs = [(record, _place(record)) for record in records]
        matches = [record for record, place in pairs if query.mismatch(record, place) is None]
        if (times is None and matches) or (times is not None and len(matches) == times):
            return matches
        raise AssertionError(explain(query, verb, pairs, len(matches), times, title))

    # -- waiting for asynchronous flows -----------------------------------------------------

    def wait_until(self, check: Callable[[], R], timeout: float = 5.0) -> R:
        """Call the assertion ``check`` until it passes (returning its result) or
        ``timeout`` seconds pass (raising its last ``AssertionError``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return check()
            except AssertionError as failure:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"after waiting {timeout}s: {failure}") from None
                with self._lock:
                    self._lock.wait(min(remaining, 0.05))

    async def wait_until_async(self, check: Callable[[], R], timeout: float = 5.0) -> R:
        """``async`` twin of :meth:`wait_until`: waits without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return check()
            except AssertionError as failure:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"after waiting {timeout}s: {failure}") from None
                await asyncio.sleep(0.005)

    def wait_until_published(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> PublishedMessage:
        """Wait up to ``timeout`` seconds for :meth:`published` (same criteria) to pass."""
        return self.wait_until(lambda: self.published(kind, **criteria), timeout)

    def wait_until_consumed(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> ConsumedMessage:
        """Wait up to ``timeout`` seconds for :meth:`consumed` (same criteria) to pass."""
        return self.wait_until(lambda: self.consumed(kind, **criteria), timeout)

    def wait_until_retried(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> SettledMessage:
        """Wait up to ``timeout`` seconds for :meth:`retried` (same criteria) to pass."""
        return self.wait_until(lambda: self.retried(kind, **criteria), timeout)

    def wait_until_dead_lettered(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> SettledMessage:
        """Wait up to ``timeout`` seconds for :meth:`dead_lettered` (same criteria) to pass."""
        return self.wait_until(lambda: self.dead_lettered(kind, **criteria), timeout)

    async def wait_until_published_async(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> PublishedMessage:
        """``async`` twin of :meth:`wait_until_published`."""
        return await self.wait_until_async(lambda: self.published(kind, **criteria), timeout)

    async def wait_until_consumed_async(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> ConsumedMessage:
        """``async`` twin of :meth:`wait_until_consumed`."""
        return await self.wait_until_async(lambda: self.consumed(kind, **criteria), timeout)

    async def wait_until_retried_async(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> SettledMessage:
        """``async`` twin of :meth:`wait_until_retried`."""
        return await self.wait_until_async(lambda: self.retried(kind, **criteria), timeout)

    async def wait_until_dead_lettered_async(
        self, kind: type | str | None = None, /, *, timeout: float = 5.0, **criteria: Any
    ) -> SettledMessage:
        """``async`` twin of :meth:`wait_until_dead_lettered`."""
        return await self.wait_until_async(lambda: self.dead_lettered(kind, **criteria), timeout)

    # -- driving dispatchers ----------------------------------------------------------------

    def run(
        self,
        dispatchers: MessageDispatcher | Mapping[str, MessageDispatcher],
        *queues: str,
        timeout: float = 10.0,
    ) -> int:
        """Consume until the queues are idle; returns how many messages were received.

        Either one dispatcher and its queue(s), ``run(dispatcher, "payments")``, or several
        services at once, each queue with its dispatcher: ``run({"orders": orders_dispatcher,
        "payments": payments_dispatcher})`` (a flow going back and forth between them).

        Idle means: every message there was is settled for good, and none given back
        (retried, released) or published with a delay is still to come. On the in-memory
        backend on the harness's clock, the clock is moved forward over those delays instead
        of waiting for them; elsewhere they take their time, up to ``timeout`` seconds in all
        (then ``AssertionError``).
        """
        pairs = _services(dispatchers, queues)
        if any(isinstance(dispatcher, AsyncMessageDispatcher) for _, dispatcher in pairs):
            raise TypeError("drive an AsyncMessageDispatcher with: await harness.run_async()")
        rounds = _Rounds(self, [queue for queue, _ in pairs], timeout)
        received = 0
        while True:
            count = sum(
                dispatcher.consume_event(queue, max_messages=10, wait_seconds=rounds.wait)
                for queue, dispatcher in pairs
            )
            received += count
            pause = rounds.after(count)
            if pause is None:
                return received
            if pause:
                time.sleep(pause)

    async def run_async(
        self,
        dispatchers: AsyncMessageDispatcher | Mapping[str, AsyncMessageDispatcher],
        *queues: str,
        timeout: float = 10.0,
    ) -> int:
        """``async`` twin of :meth:`run`, for
        :class:`~melange.dispatch.aio.AsyncMessageDispatcher` (same arguments)."""
        pairs = _services(dispatchers, queues)
        rounds = _Rounds(self, [queue for queue, _ in pairs], timeout)
        received = 0
        while True:
            count = 0
            for queue, dispatcher in pairs:
                count += await dispatcher.consume_event(
                    queue, max_messages=10, wait_seconds=rounds.wait
                )
            received += count
            pause = rounds.after(count)
            if pause is None:
                return received
            await asyncio.sleep(pause)

    def _upcoming(self, queues: Sequence[str]) -> float | None:
        """The earliest time a message given back to ``queues`` (or published with a delay)
        is due again, if one is still to come; ``None`` when none is."""
        now = self.clock()
        with self._lock:
            due = [at for (queue, _), at in self._returning.items() if queue in queues]
            due += self._delayed
        # A message due a while ago that has not come back yet is still to come.
        pending = [at for at in due if at > now - 1.0]
        if not pending:
            return None
        return min(pending)

    def _not_idle(self, queues: Sequence[str], timeout: float) -> str:
        memory = self._memory_backend()
        depths = (
            ", ".join(f"{queue}: {memory.queue_depth(queue)} message(s)" for queue in queues)
            if memory is not None
            else ", ".join(queues)
        )
        return f"the queues were still busy after {timeout}s ({depths})"

    def _memory_backend(self) -> InMemoryMessagingBackend | None:
        backend: Any = self.backend
        if isinstance(backend, BlockingBackendAdapter):
            backend = backend.backend
        return backend if isinstance(backend, InMemoryMessagingBackend) else None

    # -- services consuming in the background -----------------------------------------------

    @contextmanager
    def running(
        self, dispatcher: MessageDispatcher, queue: str, **loop_options: Any
    ) -> Iterator[MessageDispatcher]:
        """Run ``dispatcher.consume_loop(queue)`` on a thread for the ``with`` block (for
        flows asserted with the ``wait_until_*`` methods); stopped when the block ends."""
        thread = self._start(dispatcher, queue, loop_options)
        try:
            yield dispatcher
        finally:
            dispatcher.stop()
            thread.join(10.0)
            self._background = [(d, t) for d, t in self._background if t is not thread]

    @asynccontextmanager
    async def running_async(
        self, dispatcher: AsyncMessageDispatcher, queue: str, **loop_options: Any
    ) -> AsyncIterator[AsyncMessageDispatcher]:
        """Run ``dispatcher.consume_loop(queue)`` as a task for the ``async with`` block;
        stopped (and awaited) when the block ends."""
        loop_options.setdefault("install_signal_handlers", False)
        task = asyncio.create_task(dispatcher.consume_loop(queue, **loop_options))
        try:
            yield dispatcher
        finally:
            dispatcher.stop()
            await task

    def start_consuming(
        self, dispatcher: MessageDispatcher, queue: str, **loop_options: Any
    ) -> MessageDispatcher:
        """Run ``dispatcher.consume_loop(queue)`` on a thread until the harness closes."""
        self._start(dispatcher, queue, loop_options)
        return dispatcher

    def _start(
        self, dispatcher: MessageDispatcher, queue: str, loop_options: dict[str, Any]
    ) -> threading.Thread:
        loop_options.setdefault("install_signal_handlers", False)
        thread = threading.Thread(
            target=dispatcher.consume_loop,
            args=(queue,),
            kwargs=loop_options,
            name=f"melange-harness-{queue}",
            daemon=True,
        )
        thread.start()
        self._background.append((dispatcher, thread))
        return thread


D = TypeVar("D", bound=DispatcherBase)


def _services(dispatchers: D | Mapping[str, D], queues: Sequence[str]) -> list[tuple[str, D]]:
    """``(queue, dispatcher)`` pairs from :meth:`Harness.run`'s arguments."""
    if isinstance(dispatchers, Mapping):
        if queues:
            raise TypeError("give the queues as the keys of the mapping, not after it")
        return list(dispatchers.items())
    return [(queue, dispatchers) for queue in queues]


class _Rounds:
    """When :meth:`Harness.run` is done: the idle rule, shared by both drivers."""

    def __init__(self, harness: Harness, queues: Sequence[str], timeout: float) -> None:
        if not queues:
            raise ValueError("name the queue(s) to consume")
        self.harness = harness
        self.queues = queues
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.memory = harness._memory_backend()
        self.fake = harness.fake_time and self.memory is not None
        #: How long each receive may wait for messages.
        self.wait = 0.0 if self.memory is not None else _POLL_SECONDS
        self._quiet = 0

    def after(self, received: int) -> float | None:
        """After a round that received ``received`` messages: ``None`` when idle, else how
        long to pause before the next round. Raises ``AssertionError`` past the timeout."""
        if received:
            self._quiet = 0
            return 0.0
        harness, memory = self.harness, self.memory
        upcoming = harness._upcoming(self.queues)
        if memory is not None:
            if all(memory.queue_depth(queue) == 0 for queue in self.queues):
                return None
            pause = 0.0
            if self.fake and upcoming is not None:
                harness.clock.advance_to(upcoming + 1e-6)
            elif self.fake:
                # Held back until a time the harness was not told (a lease running out):
                # move on in growing steps.
                self._quiet += 1
                harness.clock.advance(min(0.01 * 2.0**self._quiet, 60.0))
            else:
                pause = 0.01
        else:
            self._quiet += 1
            if upcoming is None and self._quiet >= 2:
                return None
            pause = 0.0
        if time.monotonic() >= self.deadline:
            raise AssertionError(harness._not_idle(self.queues, self.timeout))
        return pause


def _place(record: Record) -> str:
    if isinstance(record, PublishedMessage):
        return record.destination
    if isinstance(record, ConsumedMessage | SettledMessage):
        return record.queue
    return ""


def _with_queue(item: ConsumedMessage, queue: str) -> ConsumedMessage:
    return ConsumedMessage(
        item.message,
        item.payload,
        item.at,
        queue=queue,
        consumer=item.consumer,
        outcome=item.outcome,
        error=item.error,
    )


def _attribute_is(name: str, value: str) -> Callable[[Any], str | None]:
    def check(record: Any) -> str | None:
        actual = getattr(record, name)
        return None if actual == value else f"{name} is {actual!r}"

    return check


def _reason_contains(text: str) -> Callable[[Any], str | None]:
    def check(record: Any) -> str | None:
        reason = f"{record.reason} ({record.exception_type})"
        return None if text in reason else f"reason was {record.reason!r}"

    return check
