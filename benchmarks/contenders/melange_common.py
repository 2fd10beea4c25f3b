"""Melange as a contender: a QueuePublisher and a MessageDispatcher on any backend.

The publisher and the dispatcher each get their own backend instance unless the backend
says one instance must serve both (in-memory: the queue lives in the instance).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from benchmarks.workload import Contender, Payload, Tally

#: ``driver`` parameter values.
THREADED = "threaded"
#: The asyncio dispatcher on the backend's native asyncio twin (the blocking backend,
#: adapted, where it has none).
ASYNCIO = "asyncio"
#: The asyncio dispatcher on the blocking backend, adapted with ``as_async``.
ASYNCIO_ADAPTED = "asyncio-adapted"


class MelangeContender(Contender):
    """Publishes with :class:`~melange.QueuePublisher`; consumes with ``consume_loop``.

    With the parameter ``driver="asyncio"`` the consumer is an ``AsyncMessageDispatcher``
    with an ``async`` handler on an event loop. When the backend has an asyncio-native twin
    (:meth:`make_async_backend`), the dispatcher awaits it and the publisher is an
    ``AsyncQueuePublisher`` on the same backend and loop, as in an asyncio service; otherwise
    (and with ``driver="asyncio-adapted"``) the dispatcher adapts the blocking backend and
    the blocking publisher publishes from a thread, as the threaded contender does.
    """

    label = "Melange"
    #: One blocking backend instance for the publisher and the dispatcher. An asyncio-native
    #: backend is always shared: an asyncio service gives its one backend to its publisher
    #: and its dispatcher, both on its event loop, as raw asyncio clients share a connection.
    shared_backend = False

    def make_backend(self) -> Any:
        """A new backend instance to benchmark."""
        raise NotImplementedError

    def make_async_backend(self) -> Any | None:
        """A new asyncio-native backend instance, or ``None`` when the backend has none."""
        return None

    def queue_options(self) -> dict[str, Any]:
        """Keyword arguments for declaring the benchmark queue."""
        return {}

    def setup(self) -> dict[str, str]:
        from melange import Consumer, JsonSerializer, MessageDispatcher, QueuePublisher
        from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher

        self.queue_name = str(self.params.get("queue", f"bench-{type(self).__name__.lower()}"))
        driver = str(self.params.get("driver", THREADED))
        self.asyncio = driver in (ASYNCIO, ASYNCIO_ADAPTED)
        self.loop = asyncio.new_event_loop() if self.asyncio else None
        self._handle: Tally | None = None
        native = self.make_async_backend() if driver == ASYNCIO else None
        self.native = native is not None
        if native is not None:
            assert self.loop is not None
            self.pub_backend = self.sub_backend = native
            self.loop.run_until_complete(
                native.declare_queue(self.queue_name, **self.queue_options())
            )
            self.purge()
            self.async_publisher = AsyncQueuePublisher(JsonSerializer(), backend=native)
        else:
            self.pub_backend = self.make_backend()
            self.sub_backend = self.pub_backend if self.shared_backend else self.make_backend()
            self.pub_backend.declare_queue(self.queue_name, **self.queue_options())
            self.purge()
            self.publisher = QueuePublisher(JsonSerializer(), backend=self.pub_backend)
        kind = AsyncMessageDispatcher if self.asyncio else MessageDispatcher
        # An asyncio service's handlers are coroutines; plain ones would each take a thread.
        handler = self._on_message_async if self.asyncio else self._on_message
        self.dispatcher = kind(
            JsonSerializer(),
            backend=self.sub_backend,
            consumers=[Consumer(on_message=handler, name="bench")],
        )
        return {"melange": version("melange")}

    def purge(self) -> None:
        purge = getattr(self.pub_backend, "purge", None)
        if purge is not None:
            purge(self.queue_name)

    def _on_message(self, payload: Any) -> None:
        handle = self._handle
        if handle is None:
            raise RuntimeError("message outside an operation")
        handle(payload)
        if handle.complete:
            # Ends consume_loop once this message is settled.
            self.dispatcher.stop()

    async def _on_message_async(self, payload: Any) -> None:
        self._on_message(payload)

    async def _publish_async(self, payload: Payload) -> None:
        await self.async_publisher.publish(self.queue_name, payload)

    def publish_one(self, payload: Payload) -> None:
        if self.native:
            assert self.loop is not None
            self.loop.run_until_complete(self._publish_async(payload))
        else:
            self.publisher.publish(self.queue_name, payload)

    def publish_many(self, payloads: list[Payload]) -> None:
        if self.native:
            assert self.loop is not None
            self.loop.run_until_complete(
                self.async_publisher.publish_batch(self.queue_name, payloads)
            )
        else:
            self.publisher.publish_batch(self.queue_name, payloads)

    async def _consume_async(self, handle: Tally) -> None:
        self._handle = handle
        try:
            while not handle.complete:
                await self.dispatcher.consume_loop(self.queue_name, install_signal_handlers=False)
        finally:
            self._handle = None

    def consume(self, n: int, handle: Tally) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self._consume_async(handle))
            return
        self._handle = handle
        try:
            while not handle.complete:
                self.dispatcher.consume_loop(self.queue_name, install_signal_handlers=False)
        finally:
            self._handle = None

    def op_e2e(self, n: int, rate: float | None = None) -> dict[str, Any]:
        if not self.native:
            return super().op_e2e(n, rate)
        assert self.loop is not None
        return self._op_e2e_async(self.loop, n, rate, self._publish_async, self._consume_async)

    def teardown(self) -> None:
        self.dispatcher.close()
        backends = [self.pub_backend]
        if self.sub_backend is not self.pub_backend:
            backends.append(self.sub_backend)
        for backend in backends:
            if self.native:
                assert self.loop is not None
                self.loop.run_until_complete(backend.aclose())
            else:
                backend.close_connection()
        if self.loop is not None:
            self.loop.close()


class EmbeddedContender(MelangeContender):
    """An embedded backend, whose asyncio face is the blocking backend adapted (``as_async``):
    under ``driver="asyncio"`` an ``AsyncQueuePublisher`` publishes on the dispatcher's loop
    through it, as an asyncio service using the backend does."""

    shared_backend = True

    def make_async_backend(self) -> Any | None:
        from melange.backends.async_interfaces import as_async

        return as_async(self.make_backend())
