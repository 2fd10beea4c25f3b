"""Backends that are not :class:`~melange.backends.interfaces.MessagingBackend` subclasses.

Melange 7.2.0 was duck-typed: any object with the right methods served as a backend, and its
users test their publishers and dispatchers with test doubles (spies, mocks) of one. Such an
object is used through :class:`DuckTypedBackend`, which calls its methods of the 7.2.0
contract (:data:`CONTRACT`) and gives every later addition (``nack``, ``dead_letter``,
``capabilities``, batches...) the base class's conservative default, whatever the object
answers to: a test double answers to every name, and its ``None`` must not be taken for a
capability or a verdict.

Queue and topic handles that are not :class:`~melange.models.QueueWrapper` /
:class:`~melange.models.TopicWrapper` (a double's ``{}``) are wrapped under the name they were
asked for, and unwrapped again when they are handed back to the object.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.models import Message, QueueWrapper, TopicWrapper

#: The methods of the 7.2.0 backend contract, which a duck-typed backend's own are used for.
CONTRACT = (
    "declare_topic",
    "get_queue",
    "declare_queue",
    "retrieve_messages",
    "yield_messages",
    "publish_to_topic",
    "publish_to_queue",
    "acknowledge",
    "close_connection",
    "delete_queue",
    "delete_topic",
)


class _ForeignQueue(QueueWrapper):
    """A queue handle of a duck-typed backend that was not a ``QueueWrapper``."""

    __slots__ = ("original",)

    def __init__(self, original: Any, name: str) -> None:
        super().__init__(original, name)
        self.original = original


class _ForeignTopic(TopicWrapper):
    """A topic handle of a duck-typed backend that was not a ``TopicWrapper``."""

    __slots__ = ("original",)

    def __init__(self, original: Any, name: str) -> None:
        super().__init__(original, name)
        self.original = original


def _queue(handle: Any, name: str) -> QueueWrapper:
    return handle if isinstance(handle, QueueWrapper) else _ForeignQueue(handle, name)


def _topic(handle: Any, name: str) -> TopicWrapper:
    return handle if isinstance(handle, TopicWrapper) else _ForeignTopic(handle, name)


def _native(handle: Any) -> Any:
    return handle.original if isinstance(handle, _ForeignQueue | _ForeignTopic) else handle


class DuckTypedBackend(MessagingBackend):
    """A :class:`MessagingBackend` that delegates the 7.2.0 contract to ``target``.

    Build it with :func:`as_backend`, which checks that ``target`` has the methods its user
    needs. A contract method ``target`` lacks raises ``TypeError`` naming it when called.
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    def _method(self, name: str) -> Any:
        method = getattr(self.target, name, None)
        if not callable(method):
            raise TypeError(f"{type(self.target).__name__} has no method {name}() of a backend")
        return method

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        return _topic(self._method("declare_topic")(topic_name), topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        return _queue(self._method("get_queue")(queue_name), queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        answer = self._method("declare_queue")(
            queue_name,
            *(_native(t) for t in topics_to_bind),
            dead_letter_queue_name=dead_letter_queue_name,
            **kwargs,
        )
        # 7.2.0 backends answered (queue, dead-letter queue); a double may answer anything.
        if isinstance(answer, tuple) and len(answer) == 2:
            queue, dlq = answer
        else:
            queue, dlq = answer, None
        wrapped_dlq = None
        if dlq is not None and dead_letter_queue_name is not None:
            wrapped_dlq = _queue(dlq, dead_letter_queue_name)
        return _queue(queue, queue_name), wrapped_dlq

    def delete_queue(self, queue: QueueWrapper) -> None:
        self._method("delete_queue")(_native(queue))

    def delete_topic(self, topic: TopicWrapper) -> None:
        self._method("delete_topic")(_native(topic))

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._method("publish_to_queue")(message, _native(queue), **kwargs)

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self._method("publish_to_topic")(message, _native(topic), **kwargs)

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return list(self._method("retrieve_messages")(_native(queue), **kwargs) or ())

    def yield_messages(self, queue: QueueWrapper, **kwargs: Any) -> Iterator[Message]:
        messages: Iterable[Message] = self._method("yield_messages")(_native(queue), **kwargs) or ()
        yield from messages

    def acknowledge(self, message: Message) -> None:
        self._method("acknowledge")(message)

    def close_connection(self) -> None:
        close = getattr(self.target, "close_connection", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"DuckTypedBackend({self.target!r})"


def as_backend(backend: Any, needs: Iterable[str], user: str) -> MessagingBackend:
    """``backend`` as a :class:`MessagingBackend`: itself when it is one, else a
    :class:`DuckTypedBackend` around it when it has every method ``needs`` names.

    Raises ``TypeError`` naming the missing methods otherwise (for instance for a string
    passed where the backend goes).
    """
    if isinstance(backend, MessagingBackend):
        return backend
    required = list(needs)
    missing = [name for name in required if not callable(getattr(backend, name, None))]
    if missing:
        raise TypeError(
            f"{user}: backend must be a MessagingBackend, or an object with the methods "
            f"{', '.join(required)}; got {type(backend).__name__}, which has no "
            f"{', '.join(missing)}"
        )
    return DuckTypedBackend(backend)


__all__ = ["CONTRACT", "DuckTypedBackend", "as_backend"]
