"""What an AsyncAPI document is made from: a service's topics, queues and messages.

A :class:`ServiceDescription` says, in Melange's words, what the document of a service shows:
the topics it publishes to, the queues it consumes (with their subscriptions to topics and
their dead-letter queues), which message types travel where, and which it sends and receives::

    description = ServiceDescription("payments", version="2.1.0")
    description.topic("orders", OrderPlaced)
    description.queue("payments", topics=["orders"], filter_events=["OrderPlaced"],
                      dead_letter_queue="payments-dlq")
    description.receives("payments", OrderPlaced)
    description.sends("payments-events", PaymentCompleted, PaymentRejected)

Message types are classes (dataclasses, pydantic models, msgspec Structs); each becomes an
AsyncAPI message named by its manifest, with the JSON Schema of its payload. The methods
return the description, so that calls chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from melange.exceptions import ConfigurationError
from melange.serializers.interfaces import Serializer

#: Whether a destination is a topic or a queue.
DestinationKind = Literal["topic", "queue"]


@dataclass
class TopicSpec:
    """A topic: its name and the message types published to it."""

    name: str
    messages: list[type[Any]] = field(default_factory=list)
    description: str = ""


@dataclass
class QueueSpec:
    """A queue: the topics feeding it, the manifests it filters on, its dead-letter queue."""

    name: str
    topics: list[str] = field(default_factory=list)
    filter_events: list[str] = field(default_factory=list)
    dead_letter_queue: str | None = None
    messages: list[type[Any]] = field(default_factory=list)
    description: str = ""


@dataclass
class OperationSpec:
    """Something the service does on a destination: send to it, or receive from it."""

    action: Literal["send", "receive"]
    destination: str
    messages: list[type[Any]] = field(default_factory=list)
    summary: str = ""


@dataclass
class ServiceDescription:
    """A service's channels, operations and message types, for its AsyncAPI document.

    Args:
        title: The service's name (the document's ``info.title``).
        version: The version of the service's API (``info.version``).
        description: A paragraph on what the service does.
        serializers: The serializers the service uses; a typed serializer's settings (its
            id, the JSON Schema it derives) describe the messages of the classes it was
            given. Classes no serializer was given to are described by the typed serializer
            of their kind.
    """

    title: str
    version: str = "1.0.0"
    description: str = ""
    serializers: list[Serializer[Any]] = field(default_factory=list)
    topics: dict[str, TopicSpec] = field(default_factory=dict)
    queues: dict[str, QueueSpec] = field(default_factory=dict)
    operations: list[OperationSpec] = field(default_factory=list)

    def topic(self, name: str, *messages: type[Any], description: str = "") -> ServiceDescription:
        """Declare topic ``name`` and message types published to it."""
        spec = self.topics.setdefault(name, TopicSpec(name))
        _extend(spec.messages, messages)
        spec.description = description or spec.description
        return self

    def queue(
        self,
        name: str,
        *,
        topics: Iterable[str] = (),
        filter_events: Iterable[str] = (),
        dead_letter_queue: str | None = None,
        description: str = "",
    ) -> ServiceDescription:
        """Declare queue ``name``: the topics it is subscribed to (declared as topics too),
        the manifests its subscriptions let through (all when empty) and its dead-letter
        queue."""
        spec = self.queues.setdefault(name, QueueSpec(name))
        for topic in topics:
            self.topic(topic)
            if topic not in spec.topics:
                spec.topics.append(topic)
        _extend(spec.filter_events, filter_events)
        spec.dead_letter_queue = dead_letter_queue or spec.dead_letter_queue
        spec.description = description or spec.description
        return self

    def receives(self, queue: str, *messages: type[Any], summary: str = "") -> ServiceDescription:
        """The service consumes ``messages`` from ``queue`` (declared if it was not)."""
        self.queue(queue)
        _extend(self.queues[queue].messages, messages)
        self._operation("receive", queue, messages, summary)
        return self

    def sends(
        self, destination: str, *messages: type[Any], summary: str = ""
    ) -> ServiceDescription:
        """The service publishes ``messages`` to ``destination``: a declared queue, else a
        topic (declared if it was not)."""
        if destination in self.queues:
            _extend(self.queues[destination].messages, messages)
        else:
            self.topic(destination, *messages)
        self._operation("send", destination, messages, summary)
        return self

    def merge(self, other: ServiceDescription) -> ServiceDescription:
        """Add what ``other`` declares (its title and version are not taken)."""
        for serializer in other.serializers:
            if serializer not in self.serializers:
                self.serializers.append(serializer)
        for topic in other.topics.values():
            self.topic(topic.name, *topic.messages, description=topic.description)
        for queue in other.queues.values():
            self.queue(
                queue.name,
                topics=queue.topics,
                filter_events=queue.filter_events,
                dead_letter_queue=queue.dead_letter_queue,
                description=queue.description,
            )
            _extend(self.queues[queue.name].messages, queue.messages)
        for operation in other.operations:
            self._operation(
                operation.action,
                operation.destination,
                tuple(operation.messages),
                operation.summary,
            )
        return self

    def kind_of(self, destination: str) -> DestinationKind:
        """Whether ``destination`` is a declared topic or queue."""
        if destination in self.queues:
            return "queue"
        if destination in self.topics:
            return "topic"
        raise ConfigurationError(f"{destination!r} is neither a declared topic nor a queue")

    def _operation(
        self,
        action: Literal["send", "receive"],
        destination: str,
        messages: tuple[type[Any], ...],
        summary: str,
    ) -> None:
        for operation in self.operations:
            if operation.action == action and operation.destination == destination:
                _extend(operation.messages, messages)
                operation.summary = summary or operation.summary
                return
        self.operations.append(OperationSpec(action, destination, list(messages), summary))


def _extend(target: list[Any], items: Iterable[Any]) -> None:
    for item in items:
        if item not in target:
            target.append(item)


__all__ = [
    "DestinationKind",
    "OperationSpec",
    "QueueSpec",
    "ServiceDescription",
    "TopicSpec",
]
