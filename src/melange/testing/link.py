"""In-memory messaging for tests: the backend and a synchronous link to consumers.

``link_synchronously`` makes message passing synchronous: every message published to the
linked queue (or to a topic of the same name) is dispatched to the consumers before
``publish`` returns, exactly once, with the same decoding, routing, acknowledgement and
failure handling as a real dispatcher::

    backend = InMemoryMessagingBackend()
    link_synchronously("orders", [consumer], JsonSerializer(), backend)
    QueuePublisher(JsonSerializer(), backend).publish("orders", {"id": 1})  # consumer ran
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.deduplication.cache import DeduplicationCache
from melange.dispatch.threaded import MessageDispatcher
from melange.models import QueueWrapper
from melange.serializers.registry import SerializerSource


def link_synchronously(
    queue_name: str,
    consumers: Iterable[Consumer] | Consumer,
    serializers: SerializerSource,
    backend: InMemoryMessagingBackend,
    cache: DeduplicationCache | None = None,
    **dispatcher_options: Any,
) -> MessageDispatcher:
    """Dispatch every message that lands in ``queue_name`` to ``consumers`` synchronously.

    The queue is created if needed, and so is a topic of the same name subscribed to it, so
    publishing to either reaches the consumers. Returns the dispatcher that does the work
    (its ``stats`` tell what happened).

    A message whose consumer fails is not acknowledged: it stays in the queue and is
    dispatched again (after the failure policy's delay) the next time a message is published
    to the queue, or when the returned dispatcher's ``consume_event`` is called.
    """
    if not isinstance(backend, InMemoryMessagingBackend):
        raise TypeError(
            f"link_synchronously works with InMemoryMessagingBackend, got {type(backend).__name__}"
        )
    items = [consumers] if isinstance(consumers, Consumer) else list(consumers)
    dispatcher = MessageDispatcher(
        serializers, cache=cache, backend=backend, consumers=items, **dispatcher_options
    )
    topic = backend.declare_topic(queue_name)
    backend.declare_queue(queue_name, topic)
    queue = QueueWrapper(queue_name, queue_name)

    def deliver(_: str) -> None:
        # One pass: what is visible now, each message once.
        messages = backend.retrieve_messages(queue, max_messages=1_000_000)
        dispatcher.dispatch(messages, queue_name)

    backend.add_listener(queue_name, deliver)
    return dispatcher


__all__ = ["link_synchronously"]
