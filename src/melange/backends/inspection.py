"""The inspection contract: what a backend offers to look into its queues from outside.

The messaging contract (:class:`~melange.backends.interfaces.MessagingBackend`) publishes,
receives and settles; it cannot list queues or count their messages. Tools (``melange queues``,
``melange dlq``, metrics) need that too, so a backend that can tell implements
:class:`Inspectable`, and optionally :class:`ListsTopics` and :class:`KnowsDeadLetterSources`.
Every backend implements them on its own terms (SQLite reads its tables, SQS reads queue
attributes, RabbitMQ asks its management API or declares passively, ...), and the tools
only ever use these methods.

An operation the backend can do only in some deployments (RabbitMQ without its management
plugin cannot list its queues) raises :class:`InspectionUnavailable`, whose message says
what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from melange.exceptions import MelangeError
from melange.models import Message


class QueueCounts(Protocol):
    """How many messages a queue holds, by state (each backend's ``QueueStats``).

    A count the backend cannot tell is ``None``; :attr:`total` is always known.
    """

    @property
    def name(self) -> str:
        """The queue."""

    @property
    def ready(self) -> int | None:
        """Messages a receive would return now."""

    @property
    def in_flight(self) -> int | None:
        """Messages received and not yet settled."""

    @property
    def delayed(self) -> int | None:
        """Messages held back until a later time (delayed publish or delayed retry)."""

    @property
    def total(self) -> int:
        """Every message of the queue, whatever its state."""


@dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds, by state, for backends that need no type of their own.

    Attributes:
        name: The queue.
        ready: Messages a receive would return now (``None``: not known).
        in_flight: Messages received and not yet settled (``None``: not known).
        delayed: Messages held back until later (``None``: not known).
    """

    name: str
    ready: int | None
    in_flight: int | None
    delayed: int | None

    @property
    def total(self) -> int:
        """Every message of the queue whose count is known."""
        return (self.ready or 0) + (self.in_flight or 0) + (self.delayed or 0)


@runtime_checkable
class Inspectable(Protocol):
    """A backend whose queues can be listed, counted, peeked at and purged."""

    def queue_names(self) -> list[str]:
        """Every queue's name, sorted (internal queues, such as retry queues, left out)."""

    def queue_stats(self, queue_name: str) -> QueueCounts:
        """How many messages the queue holds, by state.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Copies of up to ``limit`` messages of the queue, oldest first where the broker
        keeps an order, without settling them (their ``metadata`` is ``None``)."""

    def purge(self, queue_name: str) -> int | None:
        """Delete the messages of the queue; returns how many where the broker says."""


@runtime_checkable
class ListsTopics(Protocol):
    """A backend whose topics can be listed."""

    def topic_names(self) -> list[str]:
        """Every topic's name, sorted."""


@runtime_checkable
class KnowsDeadLetterSources(Protocol):
    """A backend that can tell which queues dead-letter into a queue."""

    def dead_letter_sources(self, queue_name: str) -> list[str]:
        """The queues whose dead letters go to ``queue_name``, sorted (empty: none)."""


class InspectionUnavailable(MelangeError):
    """The backend cannot do this inspection where it runs; the message says what it needs
    (e.g. RabbitMQ's management plugin)."""


__all__ = [
    "Inspectable",
    "InspectionUnavailable",
    "KnowsDeadLetterSources",
    "ListsTopics",
    "QueueCounts",
    "QueueStats",
]
