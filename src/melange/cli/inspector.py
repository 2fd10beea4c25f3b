"""What ``melange queues`` and ``melange dlq`` read from a backend, through the inspection
contract (:mod:`melange.backends.inspection`), and how they print it as JSON."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from melange.backends.inspection import (
    Inspectable,
    InspectionUnavailable,
    KnowsDeadLetterSources,
    ListsTopics,
)
from melange.backends.interfaces import MessagingBackend
from melange.cli._common import CommandError
from melange.models import Message


class Inspector:
    """Read-only views on a backend's queues, where the backend offers them.

    The broker contract has no listing or peeking; backends add them by implementing
    :class:`~melange.backends.inspection.Inspectable` (the in-memory backend offers a subset:
    ``queue_depth`` and a ``peek`` without a limit). A backend without them gets a clear
    "cannot" instead of a guess.
    """

    def __init__(self, backend: MessagingBackend) -> None:
        self.backend = backend

    def _need(self, method: str, what: str) -> Callable[..., Any]:
        found = getattr(self.backend, method, None)
        if not callable(found):
            raise CommandError(
                f"the {self.backend.capabilities.name} backend cannot {what}; use the broker's "
                "own tools for this"
            )
        return found  # type: ignore[no-any-return]

    def queue_names(self) -> list[str]:
        """Every queue's name."""
        return list(self._need("queue_names", "list its queues")())

    def topic_names(self) -> list[str] | None:
        """Every topic's name, or ``None`` where the backend cannot list them here."""
        if not isinstance(self.backend, ListsTopics):
            return None
        try:
            return list(self.backend.topic_names())
        except InspectionUnavailable:
            return None

    def dead_letter_sources(self, queue: str) -> list[str] | None:
        """The queues that dead-letter into ``queue``, or ``None`` where not known."""
        if not isinstance(self.backend, KnowsDeadLetterSources):
            return None
        try:
            return list(self.backend.dead_letter_sources(queue))
        except InspectionUnavailable:
            return None

    def stats(self, queue: str) -> dict[str, int | None]:
        """``ready``, ``in_flight``, ``delayed`` and ``total`` messages of the queue
        (``None`` for a count the backend does not break down)."""
        if isinstance(self.backend, Inspectable):
            stats = self.backend.queue_stats(queue)
            return {
                "ready": stats.ready,
                "in_flight": stats.in_flight,
                "delayed": stats.delayed,
                "total": stats.total,
            }
        total = int(self._need("queue_depth", "count the messages of a queue")(queue))
        return {"ready": None, "in_flight": None, "delayed": None, "total": total}

    def peek(self, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages of the queue, oldest first, without receiving them."""
        method = self._need("peek", "show messages without receiving them")
        if "limit" in inspect.signature(method).parameters:
            return list(method(queue, limit=limit))
        return list(method(queue))[:limit]

    def purge(self, queue: str) -> int | None:
        """Delete every message of the queue; returns how many where the backend says."""
        deleted = self._need("purge", "purge a queue")(queue)
        return int(deleted) if isinstance(deleted, int) else None


def json_text(value: object) -> str:
    """``value`` as one line of JSON that is safe on a terminal: every control character
    (DEL included, which JSON leaves as it is) is a ``\\u`` escape, and text stays exact."""
    return json.dumps(value, ensure_ascii=True).replace("\x7f", "\\u007f")


__all__ = ["Inspector", "json_text"]
