"""Melange as a contender: a QueuePublisher and a MessageDispatcher on any backend.

The publisher and the dispatcher each get their own backend instance unless the backend
says one instance must serve both (in-memory: the queue lives in the instance).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from benchmarks.workload import Contender, Payload, Tally


class MelangeContender(Contender):
    """Publishes with :class:`~melange.QueuePublisher`; consumes with ``consume_loop``.

    With the parameter ``driver="asyncio"`` the consumer is an ``AsyncMessageDispatcher``
    running on an event loop (the publisher stays the same).
    """

    label = "Melange"
    #: One backend instance for the publisher and the dispatcher.
    shared_backend = False

    def make_backend(self) -> Any:
        """A new backend instance to benchmark."""
        raise NotImplementedError

    def queue_options(self) -> dict[str, Any]:
        """Keyword arguments for declaring the benchmark queue."""
        return {}

    def setup(self) -> dict[str, str]:
        from melange import Consumer, JsonSerializer, MessageDispatcher, QueuePublisher
        from melange.aio import AsyncMessageDispatcher

        self.queue_name = str(self.params.get("queue", f"bench-{type(self).__name__.lower()}"))
        self.pub_backend = self.make_backend()
        self.sub_backend = self.pub_backend if self.shared_backend else self.make_backend()
        self.pub_backend.declare_queue(self.queue_name, **self.queue_options())
        self.purge()
        self.publisher = QueuePublisher(JsonSerializer(), backend=self.pub_backend)
        self._handle: Tally | None = None
        self.asyncio = self.params.get("driver") == "asyncio"
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

    def publish_one(self, payload: Payload) -> None:
        self.publisher.publish(self.queue_name, payload)

    def publish_many(self, payloads: list[Payload]) -> None:
        self.publisher.publish_batch(self.queue_name, payloads)

    def consume(self, n: int, handle: Tally) -> None:
        self._handle = handle
        try:
            while not handle.complete:
                loop = self.dispatcher.consume_loop(self.queue_name, install_signal_handlers=False)
                if self.asyncio:
                    asyncio.run(loop)
        finally:
            self._handle = None

    def teardown(self) -> None:
        self.dispatcher.close()
        self.pub_backend.close_connection()
        if self.sub_backend is not self.pub_backend:
            self.sub_backend.close_connection()
