"""Publishers: serialize a message and hand it to a backend.

:class:`QueuePublisher` sends to one queue (one consumer group reads it);
:class:`TopicPublisher` sends to a topic that fans the message out to every subscribed queue::

    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("orders", {"id": 1})

How a publisher reaches a destination (handles looked up once and cached, a cached handle
dropped when its destination turns out deleted, a missing topic created with a warning) is
decided once, by :class:`Destinations`, for these publishers and their ``async`` twins in
:mod:`melange.aio`: its steps yield what to do and each publisher performs it, with blocking
calls or by awaiting.

Every message a publisher sends is also told to the *publish listeners* registered with
:func:`add_publish_listener` (a test harness records what a service published this way,
whatever publisher sent it), as a :class:`Publication`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from melange.backends.backend_manager import BackendManager
from melange.backends.duck_typed import as_backend
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.publish_options import DELAY_SECONDS, publish_delay
from melange.context import current_message
from melange.exceptions import ConfigurationError, DestinationNotFoundError, TopicNotFoundError
from melange.models import (
    CAUSATION_ID,
    CORRELATION_ID,
    PUBLISHED_AT,
    Message,
    QueueWrapper,
    TopicWrapper,
)
from melange.publish_middleware import DestinationKind, PublishMiddleware, PublishMiddlewareChain
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry, SerializerSource

if TYPE_CHECKING:
    from melange.claimcheck import ClaimCheck

logger = logging.getLogger("melange.publishers")

T = TypeVar("T")


# -- publish listeners: told of every message sent, by every publisher of the process --


@dataclass(frozen=True, slots=True)
class Publication:
    """A message a publisher handed to its backend, as publish listeners are told of it.

    Attributes:
        destination: The queue or topic name.
        kind: ``"queue"`` or ``"topic"`` (a topic publish is told even when no queue is
            subscribed to the topic).
        message: The envelope sent (id, manifest, headers, content).
        payload: The object that was serialized into it.
        delay_seconds: The publish delay asked for, if any.
    """

    destination: str
    kind: DestinationKind
    message: Message
    payload: Any
    delay_seconds: float | None = None


#: What a publish listener is: called with each :class:`Publication`, in the publishing
#: thread (or task), after the backend took the message.
PublishListener = Callable[[Publication], None]

_listeners: tuple[PublishListener, ...] = ()
_listeners_lock = threading.Lock()


def add_publish_listener(listener: PublishListener) -> None:
    """Tell ``listener`` of every message any publisher of this process sends from now on.

    A listener must be quick and must not raise: an exception it raises is logged and
    ignored, so that observing never fails a publish.
    """
    global _listeners
    with _listeners_lock:
        _listeners = (*_listeners, listener)


def remove_publish_listener(listener: PublishListener) -> None:
    """Stop telling ``listener`` of published messages (nothing if it was not added)."""
    global _listeners
    with _listeners_lock:
        _listeners = tuple(item for item in _listeners if item != listener)


def _announce(
    destination: str,
    kind: DestinationKind,
    messages: Sequence[Message],
    payloads: Sequence[Any],
    options: Mapping[str, Any] | None,
) -> None:
    delay = (options or {}).get(DELAY_SECONDS)
    for listener in _listeners:
        for message, payload in zip(messages, payloads, strict=False):
            try:
                listener(Publication(destination, kind, message, payload, delay))
            except Exception:
                logger.exception("publish listener %r failed; ignored", listener)


#: The backend keyword arguments of a publish without options (never changed).
_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})

# -- destination rules: decided here, performed by the blocking and the asyncio publishers --


@dataclass(slots=True)
class LookUp:
    """Look the destination ``name`` up. Result: its handle; a destination that does not
    exist raises :class:`~melange.exceptions.DestinationNotFoundError`."""

    name: str


@dataclass(slots=True)
class CreateTopic:
    """Create the topic ``name``. Result: its handle."""

    name: str


@dataclass(slots=True)
class Send:
    """Send ``message`` to the destination behind ``handle``, with the backend keyword
    arguments ``options`` (e.g. ``delay_seconds``). Result: ``None``."""

    message: Message
    handle: Any
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SendBatch:
    """Send ``messages`` to the destination behind ``handle`` in as few calls as the backend
    allows. Result: ``None``."""

    messages: list[Message]
    handle: Any


#: What the destination rules ask a publisher to do.
PublishEffect = LookUp | CreateTopic | Send | SendBatch
#: A step of the destination rules: a generator of effects that returns a ``T``; a failed
#: effect is thrown back into it as the exception it raised.
PublishStep = Generator[PublishEffect, Any, T]


class Destinations:
    """The destination handles of one publisher and the rules for using them, without I/O.

    Each method is a :data:`PublishStep`: a blocking publisher performs its effects with
    blocking calls (:func:`run_steps`), an asyncio one awaits them.

    Args:
        publisher: The publisher's name, for the warning about a topic it created.
        middleware: Run around every send (see :mod:`melange.publish_middleware`).
        kind: What the destinations are, for the middleware.
    """

    __slots__ = ("_handles", "kind", "middleware", "publisher")

    def __init__(
        self,
        publisher: str,
        middleware: Sequence[PublishMiddleware] = (),
        kind: DestinationKind = "queue",
    ) -> None:
        self.publisher = publisher
        self.middleware = PublishMiddlewareChain(middleware)
        self.kind: DestinationKind = kind
        # Handles are looked up once per destination (the backend caches URLs/ARNs too).
        self._handles: dict[str, Any] = {}

    def handle(self, name: str, create_topic: bool = False) -> PublishStep[Any]:
        """The handle of ``name``: cached, else looked up (and cached). With
        ``create_topic``, a topic that does not exist is created, with a warning."""
        if not isinstance(name, str):
            raise TypeError(f"destination name must be a str, got {type(name).__name__}")
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = yield from self._look_up(name, create_topic)
        return handle

    def _look_up(self, name: str, create_topic: bool) -> PublishStep[Any]:
        try:
            return (yield LookUp(name))
        except TopicNotFoundError:
            if not create_topic:
                raise
        logger.warning(
            "topic %r did not exist and was created; pass declare_topics=False to the "
            "%s to make this an error",
            name,
            self.publisher,
        )
        return (yield CreateTopic(name))

    def publish(
        self,
        name: str,
        message: Message,
        create_topic: bool = False,
        options: Mapping[str, Any] | None = None,
        payload: Any = None,
    ) -> PublishStep[Message]:
        """Send ``message`` to ``name`` (with the backend keyword arguments ``options``). A
        destination deleted since its handle was looked up raises, and is looked up again
        next time. ``payload`` is the object ``message`` was serialized from, for the publish
        listeners."""
        if self.middleware:
            with self.middleware.publishing((message,), name, self.kind):
                return (yield from self._publish(name, message, create_topic, options, payload))
        return (yield from self._publish(name, message, create_topic, options, payload))

    def _publish(
        self,
        name: str,
        message: Message,
        create_topic: bool,
        options: Mapping[str, Any] | None,
        payload: Any,
    ) -> PublishStep[Message]:
        handle = self._handles.get(name) if isinstance(name, str) else None
        if handle is None:
            handle = yield from self.handle(name, create_topic)
        try:
            yield Send(message, handle, options or _NO_OPTIONS)
        except Exception as exc:
            self.failed(name, exc)
            raise
        self.sent(name, message, payload, options)
        return message

    def direct(self, name: str) -> Any:
        """The handle to send a message to ``name`` with, when nothing else is to be done
        first (the handle is cached and there is no middleware), else ``None``.

        A publisher's hot path: given a handle, it sends with it, then calls :meth:`sent`,
        or :meth:`failed` when the send raised, which are the steps :meth:`publish` takes
        then; without one, it runs :meth:`publish`.
        """
        return None if self.middleware else self._handles.get(name)

    def failed(self, name: str, exc: BaseException) -> None:
        """A send to ``name`` raised ``exc``: a destination deleted since its handle was
        looked up is looked up again next time."""
        if isinstance(exc, DestinationNotFoundError):
            self._handles.pop(name, None)

    def sent(
        self, name: str, message: Message, payload: Any, options: Mapping[str, Any] | None
    ) -> None:
        """``message`` was sent to ``name``: tell the publish listeners, if any."""
        if _listeners:
            _announce(name, self.kind, (message,), (payload,), options)

    def publish_batch(
        self,
        name: str,
        messages: list[Message],
        create_topic: bool = False,
        payloads: Sequence[Any] = (),
    ) -> PublishStep[list[Message]]:
        """Send ``messages`` (if any) to ``name`` in as few calls as the backend allows;
        ``payloads`` are the objects they were serialized from, for the publish listeners."""
        if messages:
            handle = yield from self.handle(name, create_topic)
            if self.middleware:
                with self.middleware.publishing(messages, name, self.kind):
                    yield SendBatch(messages, handle)
            else:
                yield SendBatch(messages, handle)
            if _listeners:
                _announce(name, self.kind, messages, payloads, None)
        return messages


def delay_options(
    capabilities: BackendCapabilities, delay_seconds: float | None, topic: bool, publisher: str
) -> dict[str, Any]:
    """The backend keyword arguments for a publish with ``delay_seconds``; refuses, before
    anything is serialized or sent, a delay the backend's ``capabilities`` say it cannot
    honour."""
    if delay_seconds is None:
        return {}
    delay = publish_delay(
        {DELAY_SECONDS: delay_seconds},
        limit=capabilities.max_publish_delay,
        backend=f"the {capabilities.name} backend",
    )
    if delay is None:  # 0: no delay, which every backend honours
        return {}
    able = capabilities.delayed_topic_publish if topic else capabilities.delayed_publish
    if not able:
        what = "a topic message" if topic else "a message"
        raise ConfigurationError(
            f"{publisher}: the {capabilities.name} backend cannot delay {what} "
            f"(its capabilities say delayed_{'topic_' if topic else ''}publish=False); "
            "publish without delay_seconds"
        )
    return {DELAY_SECONDS: delay}


def run_steps(step: PublishStep[T], perform: Callable[[PublishEffect], Any]) -> T:
    """Drive ``step`` to its end, performing each effect with the blocking ``perform``."""
    try:
        effect = next(step)
        while True:
            try:
                result = perform(effect)
            except BaseException as exc:
                effect = step.throw(exc)
            else:
                effect = step.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


def _coerce_serializers(serializers: SerializerSource | None) -> SerializerRegistry:
    """The serializer registry of a publisher (or outbox) given ``serializers``: JSON when
    none are given."""
    return SerializerRegistry.coerce(serializers if serializers is not None else JsonSerializer())


class _Capable(Protocol):
    @property
    def capabilities(self) -> BackendCapabilities: ...


class _Envelopes:
    """How the blocking and the asyncio publishers build what they send."""

    #: The serializers messages are encoded with.
    serializer_registry: SerializerRegistry
    #: The backend (blocking, or adapted to asyncio): its capabilities decide the delays.
    _backend: _Capable
    #: Whether this publisher sends to topics (for the capability its delays need).
    _to_topics = False

    def _build(
        self,
        data: Any,
        message_group_id: str | None,
        message_deduplication_id: str | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Message:
        """The envelope for ``data`` (see :func:`build_message`)."""
        return build_message(
            self.serializer_registry,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
        )

    def _delay(self, delay_seconds: float) -> dict[str, Any]:
        """The backend keyword arguments for a publish with ``delay_seconds`` (see
        :func:`delay_options`), checked before anything is serialized."""
        return delay_options(
            self._backend.capabilities, delay_seconds, self._to_topics, type(self).__name__
        )


class _Publisher(_Envelopes):
    #: The backend methods this publisher calls: an object that is not a
    #: :class:`MessagingBackend` serves as its backend when it has them (7.2.0 duck typing).
    _needs: tuple[str, ...] = ("get_queue", "publish_to_queue")
    _backend: MessagingBackend

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
    ) -> None:
        if isinstance(serializer_registry, MessagingBackend) and backend is None:
            raise TypeError(
                f"{type(self).__name__} takes the serializer(s) first and the backend second"
            )
        self.serializer_registry = _coerce_serializers(serializer_registry)
        if backend is not None:
            backend = as_backend(backend, self._needs, type(self).__name__)
        self._backend = backend or BackendManager().get_backend()

    @property
    def backend(self) -> MessagingBackend:
        """The backend messages are handed to."""
        return self._backend


def build_message(
    registry: SerializerRegistry,
    data: Any,
    message_group_id: str | None = None,
    message_deduplication_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Message:
    """The envelope every publisher (and the outbox) sends for ``data``: serialized by the
    serializer ``registry`` picks for it, with its manifest and serializer id, and headers in
    this order: the serializer's own (a typed message's schema version), the causation links
    to the message being handled (when published from inside a consumer), the caller's, then
    ``correlation_id``/``causation_id``."""
    serializer = registry.find_serializer_for(data)
    # The headers dict is built once, in Message.create's order (the publish time first,
    # anything below may override it), and handed to the message without another copy.
    merged: dict[str, str] = {PUBLISHED_AT: f"{time.time():.6f}"}
    own = serializer.message_headers(data)
    if own:
        merged.update(own)
    cause = current_message()
    if cause is not None:
        # Published from inside a consumer: link the new message to the one being handled.
        merged[CAUSATION_ID] = cause.message_id
        merged[CORRELATION_ID] = cause.headers.get(CORRELATION_ID, cause.message_id)
    if headers:
        merged.update(headers)
    if correlation_id is not None:
        merged[CORRELATION_ID] = correlation_id
    if causation_id is not None:
        merged[CAUSATION_ID] = causation_id
    message = Message(
        None,
        serializer.serialize(data),
        None,
        serializer.identifier(),
        serializer.manifest(data),
        None,
        None,
        message_group_id,
        message_deduplication_id,
    )
    message.headers = merged
    return message


class _DestinationPublisher(_Publisher):
    """Publishing shared by queues and topics; subclasses say how to reach a destination."""

    #: The name the warning about a created topic gives the publisher.
    _publisher_name = "publisher"

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
        *,
        middleware: Sequence[PublishMiddleware] = (),
        claim_check: ClaimCheck | None = None,
    ) -> None:
        super().__init__(serializer_registry, backend)
        kind: DestinationKind = "topic" if self._to_topics else "queue"
        self._destinations = Destinations(self._publisher_name, middleware, kind)
        self.claim_check = claim_check

    def _checked(self, message: Message) -> Message:
        """``message``, or the reference to its body stored by the claim check when it is
        too large for the backend (see :mod:`melange.claimcheck`)."""
        claim_check = self.claim_check
        if claim_check is None or not claim_check.wants(message, self._backend.capabilities):
            return message
        return claim_check.check_in(message, self._to_topics)

    @property
    def _create_topic(self) -> bool:
        """Whether a missing topic is created rather than an error."""
        return False

    def _lookup(self, name: str) -> Any:
        raise NotImplementedError

    def _declare(self, name: str) -> Any:
        raise NotImplementedError

    def _send(self, message: Message, handle: Any, options: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _send_batch(self, messages: list[Message], handle: Any) -> None:
        raise NotImplementedError

    def _perform(self, effect: PublishEffect) -> Any:
        if isinstance(effect, Send):
            return self._send(effect.message, effect.handle, effect.options)
        if isinstance(effect, LookUp):
            return self._lookup(effect.name)
        if isinstance(effect, SendBatch):
            return self._send_batch(effect.messages, effect.handle)
        return self._declare(effect.name)

    def _publish(
        self,
        name: str,
        message: Message,
        options: Mapping[str, Any] | None = None,
        payload: Any = None,
    ) -> Message:
        destinations = self._destinations
        handle = destinations.direct(name) if isinstance(name, str) else None
        if handle is None:
            step = destinations.publish(name, message, self._create_topic, options, payload)
            return run_steps(step, self._perform)
        # The handle is known: the steps of Destinations.publish, without driving a
        # generator for each message.
        try:
            self._send(message, handle, options or _NO_OPTIONS)
        except Exception as exc:
            destinations.failed(name, exc)
            raise
        destinations.sent(name, message, payload, options)
        return message

    def _publish_data(
        self,
        destination: str,
        data: Any,
        message_group_id: str | None,
        message_deduplication_id: str | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        delay_seconds: float | None = None,
    ) -> Message:
        options = self._delay(delay_seconds) if delay_seconds is not None else None
        message = self._build(
            data, message_group_id, message_deduplication_id, headers, correlation_id, causation_id
        )
        return self._publish(destination, self._checked(message), options, data)

    def publish_batch(
        self,
        destination: str,
        items: Iterable[Any],
        message_group_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> list[Message]:
        """Publish several messages in as few broker calls as the backend allows.

        Raises :class:`~melange.exceptions.BatchPublishError` naming the refused messages.
        """
        payloads = list(items)
        messages = [
            self._checked(self._build(item, message_group_id, None, headers, None, None))
            for item in payloads
        ]
        step = self._destinations.publish_batch(destination, messages, self._create_topic, payloads)
        return run_steps(step, self._perform)


class QueuePublisher(_DestinationPublisher):
    """Publishes messages to queues.

    Args:
        serializer_registry: A serializer, a list of serializers (each picked by the type of the
            published object, the first being the default), a
            :class:`~melange.serializers.registry.SerializerRegistry`, or its 7.2.0 config dict.
            Defaults to JSON.
        backend: The backend; defaults to the one set on
            :class:`~melange.backends.backend_manager.BackendManager`.
        middleware: :class:`~melange.publish_middleware.PublishMiddleware` run around
            every send, in order (tracing, for one).
        claim_check: A :class:`~melange.claimcheck.ClaimCheck`: a message too large for the
            backend is stored in its payload store and sent as a reference (the
            dispatchers need the same claim check); see :doc:`/claim-check`.
    """

    def publish(
        self,
        queue_name: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it to ``queue_name``; returns the envelope sent.

        Args:
            queue_name: The queue.
            data: The message; the serializer is chosen by its type.
            message_group_id: Ordering key, for FIFO queues.
            message_deduplication_id: Broker-side deduplication id, for FIFO queues.
            headers: Extra string headers to send along.
            correlation_id: Overrides the correlation id (by default, when publishing from
                inside a consumer, the one of the message being processed).
            causation_id: Overrides the causation id (by default the id of the message being
                processed).
            delay_seconds: Hold the message back this many seconds before a consumer can
                receive it, on backends whose capabilities say ``delayed_publish`` (not on
                FIFO queues, as on SQS); see :doc:`/publishers`.

        Raises:
            QueueNotFoundError: The queue does not exist.
            PublishError: The broker refused the message.
            SerializationError: ``data`` could not be serialized.
            ConfigurationError: A ``delay_seconds`` the backend cannot honour (before
                anything is sent).
        """
        return self._publish_data(
            queue_name,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
            delay_seconds,
        )

    def _lookup(self, name: str) -> QueueWrapper:
        return self._backend.get_queue(name)

    def _send(self, message: Message, handle: QueueWrapper, options: Mapping[str, Any]) -> None:
        self._backend.publish_to_queue(message, handle, **options)

    def _send_batch(self, messages: list[Message], handle: QueueWrapper) -> None:
        self._backend.publish_batch_to_queue(messages, handle)


class TopicPublisher(_DestinationPublisher):
    """Publishes messages to topics, which fan them out to every subscribed queue.

    Args:
        serializer_registry: As for :class:`QueuePublisher`.
        backend: As for :class:`QueuePublisher`.
        declare_topics: Create a topic that does not exist yet, once, on the first publish to
            it (with a warning in the log), as released versions did: publishing an event
            before anyone subscribed is normal in pub/sub. ``False`` raises
            :class:`~melange.exceptions.TopicNotFoundError` instead, which catches a
            misspelled topic name.
        middleware: As for :class:`QueuePublisher`.
        claim_check: As for :class:`QueuePublisher`. A topic message's payload is shared by
            every subscribed queue's copy, so it is removed by the claim check's lifetime,
            not when one copy is acknowledged.
    """

    _publisher_name = "TopicPublisher"
    _to_topics = True
    _needs = ("declare_topic", "publish_to_topic")

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        backend: MessagingBackend | None = None,
        *,
        declare_topics: bool = True,
        middleware: Sequence[PublishMiddleware] = (),
        claim_check: ClaimCheck | None = None,
    ) -> None:
        super().__init__(
            serializer_registry, backend, middleware=middleware, claim_check=claim_check
        )
        self.declare_topics = declare_topics

    def publish(
        self,
        topic_name: str,
        data: Any,
        message_group_id: str | None = None,
        message_deduplication_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> Message:
        """Serialize ``data`` and publish it to ``topic_name``; returns the envelope sent.

        Takes the same arguments as :meth:`QueuePublisher.publish`; raises
        :class:`~melange.exceptions.TopicNotFoundError` if the topic does not exist. A
        ``delay_seconds`` holds back every copy, on backends whose capabilities say
        ``delayed_topic_publish``.
        """
        return self._publish_data(
            topic_name,
            data,
            message_group_id,
            message_deduplication_id,
            headers,
            correlation_id,
            causation_id,
            delay_seconds,
        )

    @property
    def _create_topic(self) -> bool:
        return self.declare_topics

    def _lookup(self, name: str) -> TopicWrapper:
        return self._backend.get_topic(name)

    def _declare(self, name: str) -> TopicWrapper:
        return self._backend.declare_topic(name)

    def _send(self, message: Message, handle: TopicWrapper, options: Mapping[str, Any]) -> None:
        self._backend.publish_to_topic(message, handle, **options)

    def _send_batch(self, messages: list[Message], handle: TopicWrapper) -> None:
        self._backend.publish_batch_to_topic(messages, handle)


__all__ = [
    "Publication",
    "PublishListener",
    "QueuePublisher",
    "TopicPublisher",
    "add_publish_listener",
    "build_message",
    "remove_publish_listener",
]
