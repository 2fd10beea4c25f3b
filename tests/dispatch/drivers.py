"""Drivers and brokers for the dispatcher behaviour suite.

A :class:`Driver` is one synchronous facade over the threaded
:class:`~melange.MessageDispatcher` and the asyncio :class:`~melange.aio.AsyncMessageDispatcher`,
so that a behaviour test is written once and runs under each: ``make`` builds a dispatcher,
``consume_event`` receives and dispatches one batch, ``run_loop`` runs ``consume_loop`` on a
background thread (the asyncio driver in its own event loop there) and returns a
:class:`LoopHandle` whose ``stop()`` stops the dispatcher and joins the thread.

The asyncio dispatcher runs twice: given the test's blocking backend and cache (``asyncio``:
it adapts them), and given asynchronous ones (``asyncio-native``: the broker's own asyncio
client where the fixture registered one in :data:`NATIVE_CLIENTS` (SQS:
``AsyncAWSBackend``), else :class:`NativeAsyncBackend`; and :class:`NativeAsyncCache`, so
leases and claims are renewed through the event loop).

A :class:`Broker` wraps the backend a test runs on (in-memory, SQLite, or a broker) with
the few helpers the tests need: uniquely named queues with a dead-letter queue, publishing,
taking what a queue holds, and stepping a fake clock through visibility timeouts and retry
delays (embedded brokers only: RabbitMQ and SQS run on real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from typing import Any, cast

from melange import JsonSerializer, MessageDispatcher
from melange.aio import AsyncMessageDispatcher
from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.deduplication.async_cache import AsyncDeduplicationCache
from melange.deduplication.cache import ClaimState, DeduplicationCache
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.testing import wait_until
from melange.testing.conformance import Topology, assert_empty, receive

DRIVER_NAMES = ("threaded", "asyncio", "asyncio-native")
#: Brokers that run in the test's process, on a fake clock.
EMBEDDED_BROKERS = ("memory", "sqlite")
#: Brokers on a server, on real time: receives wait for deliveries.
SERVER_BROKERS = ("rabbitmq", "sqs", "redis-streams", "nats", "kafka", "kombu-redis", "kombu-amqp")
#: Seconds an SQS message received by a test's backend stays hidden (the dispatchers'
#: heartbeat renews it while a handler runs).
SQS_VISIBILITY_TIMEOUT = 2
#: Seconds an SQS queue's approximate counts may take to reach zero (exact on moto).
SQS_COUNT_SETTLE_SECONDS = 5.0


#: For a test's blocking backend, how to make an asyncio-native client of the same broker:
#: the ``asyncio-native`` driver gives the dispatcher such clients (see :class:`PerLoopBackend`)
#: instead of the blocking backend behind :class:`NativeAsyncBackend`.
NATIVE_CLIENTS: weakref.WeakKeyDictionary[MessagingBackend, Callable[[], AsyncMessagingBackend]]
NATIVE_CLIENTS = weakref.WeakKeyDictionary()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    wait_until(condition, timeout, what or None)


# -- drivers --------------------------------------------------------------------------------


class LoopHandle:
    """A dispatcher's ``consume_loop`` running on a background thread."""

    def __init__(self, dispatcher: MessageDispatcher, run: Callable[[], None], name: str) -> None:
        self.dispatcher = dispatcher
        #: What the loop raised, if it raised (``SystemExit`` and ``KeyboardInterrupt`` too),
        #: without its traceback (which would keep the loop's frames and tasks alive), and
        #: that traceback as text.
        self.error: BaseException | None = None
        self.error_text = ""
        self._thread = threading.Thread(target=self._main, args=(run,), name=name, daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as exc:  # kept for the test to look at
            self.error = exc
            self.error_text = "".join(traceback.format_exception(exc))
            _drop_tracebacks(exc)
        finally:
            # See Driver.close: finalize what the loop left behind here and now.
            gc.collect()

    @property
    def running(self) -> bool:
        """Whether ``consume_loop`` has not returned (or raised) yet."""
        return self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the loop to end by itself; whether it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        """Call ``dispatcher.stop()`` and join the loop; fail when it does not return within
        ``timeout`` seconds or when it raised."""
        self.dispatcher.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"consume_loop did not return within {timeout}s of stop()")
        if self.error is not None:
            raise AssertionError(f"consume_loop raised {self.error!r}:\n{self.error_text}")

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop and join without judging the outcome (teardown)."""
        self.dispatcher.stop()
        self._thread.join(timeout)


def _drop_tracebacks(exc: BaseException) -> None:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__]


class Driver:
    """Runs dispatchers one way (threads or asyncio) behind a synchronous interface.

    It keeps track of the dispatchers and loops it made; :meth:`close` stops and closes them
    (the fixtures call it before the backend is closed).
    """

    name: str = ""

    def __init__(self) -> None:
        self._dispatchers: list[MessageDispatcher] = []
        self._loops: list[LoopHandle] = []

    def __repr__(self) -> str:
        return f"<{self.name} driver>"

    def _new(self, serializers: Any, **kwargs: Any) -> MessageDispatcher:
        raise NotImplementedError

    def make(self, serializers: Any = None, **kwargs: Any) -> MessageDispatcher:
        """A dispatcher of this driver; JSON only unless ``serializers`` says otherwise.

        Keyword arguments are the dispatcher's (``backend=``, ``consumers=``, ``cache=``,
        ``failure_policy=``, ``dedup_lease_seconds=``...).
        """
        dispatcher = self._new(
            serializers if serializers is not None else JsonSerializer(), **kwargs
        )
        self._dispatchers.append(dispatcher)
        return dispatcher

    def consume_event(self, dispatcher: MessageDispatcher, queue: str, **kwargs: Any) -> int:
        """Receive one batch from ``queue`` and dispatch it; returns its size."""
        raise NotImplementedError

    async def loop_ending(self, dispatcher: MessageDispatcher) -> None:
        """Close what ``dispatcher`` opened on the running event loop, which is about to end
        (a test that runs an asyncio dispatcher in an event loop of its own awaits it last)."""

    def _loop(
        self, dispatcher: MessageDispatcher, queue: str, concurrency: int, kwargs: dict[str, Any]
    ) -> Callable[[], None]:
        raise NotImplementedError

    def run_loop(
        self, dispatcher: MessageDispatcher, queue: str, concurrency: int = 1, **kwargs: Any
    ) -> LoopHandle:
        """Start ``consume_loop`` on ``queue`` on a background thread, ``concurrency`` messages
        at once (``workers`` or ``concurrency``), without signal handlers."""
        kwargs.setdefault("install_signal_handlers", False)
        run = self._loop(dispatcher, queue, concurrency, kwargs)
        handle = LoopHandle(dispatcher, run, f"{self.name}-loop-{queue}")
        self._loops.append(handle)
        return handle

    def close(self) -> None:
        """Stop every loop this driver started and close its dispatchers (idempotent)."""
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.shutdown()
        dispatchers, self._dispatchers = self._dispatchers, []
        for dispatcher in dispatchers:
            with contextlib.suppress(Exception):
                dispatcher.close()
        if loops or dispatchers:
            # Finalize what the loops left behind (an asyncio task that ended with an exception
            # logs it, with its traceback, when collected) now rather than at a random later
            # allocation: on Python 3.11 a collection inside pytest's own ``ast.parse``, while
            # it formats a failure, makes that parse fail with "AST constructor recursion depth
            # mismatch" and ends the whole run with an INTERNALERROR.
            del loops, dispatchers
            gc.collect()


class ThreadedDriver(Driver):
    """:class:`melange.MessageDispatcher`, loops on threads (``workers``)."""

    name = "threaded"

    def _new(self, serializers: Any, **kwargs: Any) -> MessageDispatcher:
        return MessageDispatcher(serializers, **kwargs)

    def consume_event(self, dispatcher: MessageDispatcher, queue: str, **kwargs: Any) -> int:
        return dispatcher.consume_event(queue, **kwargs)

    def _loop(
        self, dispatcher: MessageDispatcher, queue: str, concurrency: int, kwargs: dict[str, Any]
    ) -> Callable[[], None]:
        return lambda: dispatcher.consume_loop(queue, workers=concurrency, **kwargs)


class AsyncioDriver(Driver):
    """:class:`melange.aio.AsyncMessageDispatcher`, each call in an event loop of its own."""

    name = "asyncio"

    def _new(self, serializers: Any, **kwargs: Any) -> MessageDispatcher:
        return AsyncMessageDispatcher(serializers, **kwargs)

    def consume_event(self, dispatcher: MessageDispatcher, queue: str, **kwargs: Any) -> int:
        aio = cast(AsyncMessageDispatcher, dispatcher)

        async def run() -> int:
            try:
                return await aio.consume_event(queue, **kwargs)
            finally:
                await self.loop_ending(dispatcher)

        return asyncio.run(run())

    def _loop(
        self, dispatcher: MessageDispatcher, queue: str, concurrency: int, kwargs: dict[str, Any]
    ) -> Callable[[], None]:
        aio = cast(AsyncMessageDispatcher, dispatcher)

        async def run() -> None:
            try:
                await aio.consume_loop(queue, concurrency=concurrency, **kwargs)
            finally:
                await self.loop_ending(dispatcher)

        return lambda: asyncio.run(run())


class AsyncioNativeDriver(AsyncioDriver):
    """:class:`melange.aio.AsyncMessageDispatcher` given an asynchronous backend and cache:
    the broker's asyncio client (:data:`NATIVE_CLIENTS`, one per event loop) or else the
    test's blocking backend behind :class:`NativeAsyncBackend`, and the cache behind
    :class:`NativeAsyncCache`."""

    name = "asyncio-native"

    def _new(self, serializers: Any, **kwargs: Any) -> MessageDispatcher:
        backend = kwargs.get("backend")
        if backend is not None:
            native = NATIVE_CLIENTS.get(backend)
            kwargs["backend"] = (
                PerLoopBackend(native) if native is not None else NativeAsyncBackend(backend)
            )
        if kwargs.get("cache") is not None:
            kwargs["cache"] = NativeAsyncCache(kwargs["cache"])
        return AsyncMessageDispatcher(serializers, **kwargs)

    async def loop_ending(self, dispatcher: MessageDispatcher) -> None:
        backend = dispatcher.backend
        if isinstance(backend, PerLoopBackend):
            await backend.aclose_loop()

    def close(self) -> None:
        backends = [d.backend for d in self._dispatchers]
        super().close()
        for backend in backends:
            if isinstance(backend, PerLoopBackend) and backend.open_clients:
                raise AssertionError(
                    f"{backend.open_clients} asyncio client(s) left open: a test ran a "
                    "dispatcher in an event loop of its own without awaiting loop_ending()"
                )


def make_driver(name: str) -> Driver:
    """The driver called ``name`` (one of :data:`DRIVER_NAMES`)."""
    drivers: dict[str, type[Driver]] = {
        "threaded": ThreadedDriver,
        "asyncio": AsyncioDriver,
        "asyncio-native": AsyncioNativeDriver,
    }
    return drivers[name]()


# -- asynchronous contracts over the test's brokers and caches ------------------------------


class NativeAsyncBackend(AsyncMessagingBackend):
    """A blocking backend presented as an asyncio-native one, as a native client would be.

    Not :func:`~melange.backends.async_interfaces.as_async`, so that the dispatcher cannot
    tell it from a native client: calls that never block run on the loop, the others on a
    worker thread (as a native client's I/O would not block the loop). ``renewals`` records
    the thread each :meth:`extend_visibility` ran on.
    """

    name = "native-test"

    def __init__(self, backend: MessagingBackend) -> None:
        self.blocking_backend = backend
        self.loop_wait_seconds = backend.loop_wait_seconds
        #: The thread each lease renewal ran on.
        self.renewals: list[str] = []

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.blocking_backend.capabilities

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.blocking_backend.blocking:
            return await asyncio.to_thread(fn, *args, **kwargs)
        await asyncio.sleep(0)  # a real client would yield to the loop here
        return fn(*args, **kwargs)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return cast(TopicWrapper, await self._call(self.blocking_backend.declare_topic, topic_name))

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        return cast(TopicWrapper, await self._call(self.blocking_backend.get_topic, topic_name))

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return cast(QueueWrapper, await self._call(self.blocking_backend.get_queue, queue_name))

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return cast(
            "tuple[QueueWrapper, QueueWrapper | None]",
            await self._call(
                self.blocking_backend.declare_queue,
                queue_name,
                *topics_to_bind,
                dead_letter_queue_name=dead_letter_queue_name,
                **kwargs,
            ),
        )

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self._call(self.blocking_backend.delete_queue, queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._call(self.blocking_backend.delete_topic, topic)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self._call(self.blocking_backend.publish_to_queue, message, queue, **kwargs)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self._call(self.blocking_backend.publish_to_topic, message, topic, **kwargs)

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        backend = self.blocking_backend
        if not backend.blocking and kwargs.get("wait_seconds"):
            # Wait for messages without holding the loop (or a thread), as a native client.
            deadline = time.monotonic() + float(kwargs["wait_seconds"])
            options = {**kwargs, "wait_seconds": 0}
            while True:
                ready = backend.retrieve_messages(queue, **options)
                if ready or time.monotonic() >= deadline:
                    return ready
                await asyncio.sleep(0.02)
        return cast(list[Message], await self._call(backend.retrieve_messages, queue, **kwargs))

    async def acknowledge(self, message: Message) -> None:
        await self._call(self.blocking_backend.acknowledge, message)

    async def acknowledge_batch(self, messages: Any) -> None:
        await self._call(self.blocking_backend.acknowledge_batch, messages)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._call(self.blocking_backend.nack, message, delay)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        await self._call(self.blocking_backend.release, message, delay)

    def holds(self, message: Message) -> bool:
        return self.blocking_backend.holds(message)

    async def dead_letter(self, message: Message, headers: Any) -> bool:
        return bool(await self._call(self.blocking_backend.dead_letter, message, headers))

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        self.renewals.append(threading.current_thread().name)
        await self._call(self.blocking_backend.extend_visibility, message, seconds)

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self.blocking_backend.visibility_timeout_for(message)

    def interrupt(self) -> None:
        self.blocking_backend.interrupt()


class PerLoopBackend(AsyncMessagingBackend):
    """A broker's asyncio-native client (e.g. ``AsyncAWSBackend``) for each event loop that
    uses it: such a client serves the one loop it connected on, and the asyncio driver runs
    every ``consume_event`` and ``consume_loop`` in an event loop of its own.

    :meth:`aclose_loop` closes the running loop's client (the driver awaits it as each of its
    event loops ends); a loop that ended gets no client again.
    """

    name = "native-per-loop"

    def __init__(self, make: Callable[[], AsyncMessagingBackend]) -> None:
        self._make = make
        #: Never connected: answers the questions about configuration.
        self._spec = make()
        self.loop_wait_seconds = self._spec.loop_wait_seconds
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, AsyncMessagingBackend] = {}
        #: The clients made so far, closed or not.
        self.made: list[AsyncMessagingBackend] = []
        self._ended: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._spec!r}>"

    @property
    def capabilities(self) -> BackendCapabilities:
        return self._spec.capabilities

    @property
    def native_type(self) -> type[AsyncMessagingBackend]:
        """The class of the clients."""
        return type(self._spec)

    @property
    def open_clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def _here(self) -> AsyncMessagingBackend:
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop in self._ended:
                raise RuntimeError(f"{self!r}: called on an event loop whose client was closed")
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = self._make()
                self.made.append(client)
            return client

    async def aclose_loop(self) -> None:
        """Close the running event loop's client, if it made one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._ended.add(loop)
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return await self._here().declare_topic(topic_name)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        return await self._here().get_topic(topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return await self._here().get_queue(queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return await self._here().declare_queue(
            queue_name, *topics_to_bind, dead_letter_queue_name=dead_letter_queue_name, **kwargs
        )

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self._here().delete_queue(queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self._here().delete_topic(topic)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self._here().publish_to_queue(message, queue, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Any, queue: QueueWrapper, **kwargs: Any
    ) -> None:
        await self._here().publish_batch_to_queue(messages, queue, **kwargs)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self._here().publish_to_topic(message, topic, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Any, topic: TopicWrapper, **kwargs: Any
    ) -> None:
        await self._here().publish_batch_to_topic(messages, topic, **kwargs)

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return await self._here().retrieve_messages(queue, **kwargs)

    async def acknowledge(self, message: Message) -> None:
        await self._here().acknowledge(message)

    async def acknowledge_batch(self, messages: Any) -> None:
        await self._here().acknowledge_batch(messages)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._here().nack(message, delay)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        await self._here().release(message, delay)

    def holds(self, message: Message) -> bool:
        # Whether the connection the message came on is still up is the running loop's
        # client's to say (RabbitMQ); off a loop, the configuration's.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._spec.holds(message)
        return self._here().holds(message)

    async def dead_letter(self, message: Message, headers: Any) -> bool:
        return await self._here().dead_letter(message, headers)

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        await self._here().extend_visibility(message, seconds)

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self._spec.visibility_timeout_for(message)

    def interrupt(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.interrupt()


class NativeAsyncCache(AsyncDeduplicationCache):
    """A blocking cache presented as an asyncio-native one (see :class:`NativeAsyncBackend`);
    ``renewals`` records which thread each claim renewal ran on."""

    def __init__(self, cache: DeduplicationCache) -> None:
        self.cache = cache
        self.renewals: list[str] = []

    async def store(self, key: str, value: Any) -> None:
        await asyncio.sleep(0)
        self.cache.store(key, value)

    async def get(self, key: str) -> Any:
        await asyncio.sleep(0)
        return self.cache.get(key)

    async def claim(self, key: str, lease_seconds: float) -> ClaimState:
        await asyncio.sleep(0)
        return self.cache.claim(key, lease_seconds)

    async def renew(self, key: str, lease_seconds: float) -> bool:
        self.renewals.append(threading.current_thread().name)
        return self.cache.renew(key, lease_seconds)

    async def mark_done(self, key: str) -> None:
        await asyncio.sleep(0)
        self.cache.mark_done(key)

    async def release(self, key: str) -> None:
        await asyncio.sleep(0)
        self.cache.release(key)


# -- brokers --------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when told to: visibility timeouts and retry delays never run
    out behind a test's back."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_SQS_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def json_message(payload: Any, group: str | None = None) -> Message:
    """``payload`` as the JSON serializer publishes it (fresh id)."""
    message = Message.create(json.dumps(payload), "json", 1)
    if group is not None:
        message.group_id = group
        message.deduplication_id = message.message_id
    return message


def payload_of(message: Message) -> Any:
    return json.loads(message.content)


class Broker:
    """The backend a test runs on, with helpers that work the same on each kind."""

    def __init__(self, kind: str, backend: MessagingBackend, clock: FakeClock | None) -> None:
        self.kind = kind
        self.backend = backend
        self.clock = clock
        self.topology = Topology(backend)
        #: ``wait_seconds`` for a receive that must see messages already published: a broker
        #: that pushes messages (RabbitMQ) needs a moment to deliver them, and SQS answers a
        #: receive that does not wait from a sample of its servers only.
        self.wait = 1.0 if kind in SERVER_BROKERS else 0.0

    def __repr__(self) -> str:
        return f"<{self.kind} broker>"

    def queue(self, fifo: bool = False, **options: Any) -> tuple[str, str]:
        """Declare a uniquely named queue with a dead-letter queue; returns both names."""
        if self.kind == "sqs":
            # The dispatcher dead-letters by its failure policy; the broker's own redrive
            # (after max_receive_count receives, releases included) stays a distant backstop.
            options.setdefault("max_receive_count", 10)
        queue = self.topology.queue(fifo=fifo, dlq=True, **options)
        return queue.name, self.topology.dead_letter_queue_of(queue).name

    def publish(self, queue: str, payloads: Iterable[Any], group: Any = None) -> list[Message]:
        """Publish JSON ``payloads`` in order; ``group`` is a group id or a function of the
        payload giving it (FIFO queues). Returns the messages sent."""
        messages = [json_message(p, group(p) if callable(group) else group) for p in payloads]
        self.publish_raw(queue, messages)
        return messages

    def publish_raw(self, queue: str, messages: list[Message]) -> None:
        self.backend.publish_batch_to_queue(messages, self.backend.get_queue(queue))

    def publish_for_id(self, queue: str, message: Message) -> str:
        """Publish ``message`` alone and return the id consumers will see for it: its own,
        except on SQS, which gives every message an id of its own (there the message is
        received once to learn it, and released, which counts as a receive)."""
        self.publish_raw(queue, [message])
        if self.kind != "sqs":
            return message.message_id
        [delivered] = receive(self.backend, self.backend.get_queue(queue), 1)
        self.backend.release(delivered)
        return delivered.message_id

    def receive_count(self, queue: str, count: int) -> list[Message]:
        """Receive until ``count`` messages arrived (left unsettled): a broker that pushes
        messages (RabbitMQ) may hand out a few at a time."""
        return receive(self.backend, self.backend.get_queue(queue), count)

    def receive_now(self, queue: str, max_messages: int = 10) -> list[Message]:
        """What a receive returns right now (left unsettled)."""
        handle = self.backend.get_queue(queue)
        return self.backend.retrieve_messages(
            handle, max_messages=max_messages, wait_seconds=self.wait
        )

    def take(self, queue: str, expected: int | None = None, timeout: float = 15.0) -> list[Message]:
        """Receive and acknowledge what ``queue`` holds: all that is visible now, or, with
        ``expected``, until that many arrived (or ``timeout`` passed)."""
        handle = self.backend.get_queue(queue)
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            wait = self.wait if expected is None else 0.5
            batch = self.backend.retrieve_messages(handle, max_messages=10, wait_seconds=wait)
            if batch:
                self.backend.acknowledge_batch(batch)
                out.extend(batch)
            if expected is None:
                if not batch:
                    return out
            elif len(out) >= expected or time.monotonic() > deadline:
                return out

    def depth(self, queue: str) -> int:
        """Messages held by ``queue``, in flight or not (in-memory and SQLite only)."""
        depth = getattr(self.backend, "queue_depth", None)
        if depth is None:
            raise NotImplementedError(f"{self.kind} cannot tell a queue's depth")
        return int(depth(queue))

    def assert_empty(self, queue: str) -> None:
        """Fail if ``queue`` still holds a message (on SQS, one in flight or delayed too)."""
        if self.kind in ("rabbitmq", "redis-streams", "nats", "kafka", "kombu-redis", "kombu-amqp"):
            assert_empty(self.backend, self.backend.get_queue(queue), wait=1.0)
        elif self.kind == "sqs":
            counts: dict[str, int] = {}

            def settled() -> bool:
                counts.update(self._sqs_counts(queue))
                return not any(counts.values())

            with contextlib.suppress(AssertionError):
                wait_for(settled, SQS_COUNT_SETTLE_SECONDS)
            assert not any(counts.values()), f"{queue} still holds messages: {counts}"
        else:
            assert self.depth(queue) == 0, f"{queue} still holds {self.depth(queue)} message(s)"

    def _sqs_counts(self, queue: str) -> dict[str, int]:
        """The messages an SQS queue holds: visible, in flight and delayed (approximate on
        AWS, exact on moto)."""
        handle = self.backend.get_queue(queue)
        client = cast(Any, self.backend).sqs_client
        answer = client.get_queue_attributes(
            QueueUrl=str(handle.unwrapped_obj), AttributeNames=list(_SQS_COUNTS)
        )
        return {name: int(answer["Attributes"].get(name, 0)) for name in _SQS_COUNTS}

    def advance(self, seconds: float) -> None:
        """Move the broker's fake clock on (in-memory and SQLite brokers only)."""
        if self.clock is None:
            raise NotImplementedError(f"the {self.kind} broker runs on real time")
        self.clock.advance(seconds)

    def cleanup(self) -> None:
        self.topology.cleanup()
