"""Create queues, topics, dead-letter queues and subscriptions, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from melange.backends.backend_manager import BackendManager
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import ConfigurationError, QueueNotFoundError, TopicNotFoundError
from melange.models import QueueWrapper, TopicWrapper


class MessagingBackendFactory:
    """Sets up the topology a service needs. Every method may be called again safely.

    Args:
        backend: The backend to set up; defaults to the ``BackendManager``'s.
    """

    def __init__(self, backend: MessagingBackend | None = None) -> None:
        self._backend = backend or BackendManager().get_backend()

    def init_topic(self, topic_name: str) -> TopicWrapper:
        """Create the topic if it does not exist."""
        _check_name("topic", topic_name)
        return self._backend.declare_topic(topic_name)

    def init_queue(
        self,
        queue_name: str,
        *topics: str | Sequence[str],
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> QueueWrapper:
        """Create the queue (and its dead-letter queue) and subscribe it to ``topics``.

        Both call styles work::

            init_queue("q", "topic-a", "topic-b", dead_letter_queue_name="q-dlq")
            init_queue("q", ["topic-a", "topic-b"], "q-dlq")   # as in 7.2.0

        Topics are created if needed. Extra keyword arguments go to the backend
        (``filter_events``, ``max_receive_count``, ``visibility_timeout``, ...).
        """
        _check_name("queue", queue_name)
        topic_names, dlq = _split_topic_args(topics)
        if dlq is not None:
            if dead_letter_queue_name is not None:
                raise ConfigurationError("dead-letter queue given twice")
            dead_letter_queue_name = dlq
        if dead_letter_queue_name is not None:
            _check_name("dead-letter queue", dead_letter_queue_name)
            if dead_letter_queue_name == queue_name:
                raise ConfigurationError(
                    f"queue {queue_name!r} cannot be its own dead-letter queue; "
                    "name another queue, e.g. " + repr(_dlq_name_for(queue_name))
                )
        wrappers = [self.init_topic(name) for name in topic_names]
        queue, _ = self._backend.declare_queue(
            queue_name, *wrappers, dead_letter_queue_name=dead_letter_queue_name, **kwargs
        )
        return queue

    def delete_queue(self, queue_name: str) -> None:
        """Delete the queue if it exists."""
        try:
            queue = self._backend.get_queue(queue_name)
        except QueueNotFoundError:
            return
        self._backend.delete_queue(queue)

    def delete_topic(self, topic_name: str) -> None:
        """Delete the topic if it exists."""
        try:
            topic = self._backend.get_topic(topic_name)
        except TopicNotFoundError:
            return
        self._backend.delete_topic(topic)


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{kind} name must be a non-empty string, got {name!r}")


def _dlq_name_for(queue_name: str) -> str:
    if queue_name.endswith(".fifo"):
        return queue_name[: -len(".fifo")] + "-dlq.fifo"
    return queue_name + "-dlq"


def _split_topic_args(args: Sequence[str | Sequence[str]]) -> tuple[list[str], str | None]:
    if args and not isinstance(args[0], str):
        # 7.2.0 style: a list of topics, then optionally the dead-letter queue name.
        topics: list[object] = list(args[0])
        rest = args[1:]
        if len(rest) > 1 or (rest and not isinstance(rest[0], str)):
            raise ConfigurationError(
                "expected init_queue(name, [topics], dead_letter_queue_name), got extra "
                f"arguments {rest!r}"
            )
        dlq = rest[0] if rest and isinstance(rest[0], str) else None
    else:
        topics = list(args)
        dlq = None
    names: list[str] = []
    for topic in topics:
        _check_name("topic", topic)
        names.append(str(topic))
    return names, dlq
