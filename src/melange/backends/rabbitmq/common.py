"""What the pika and the asyncio RabbitMQ backends decide alike, without any I/O.

:class:`RabbitMQBackendBase` takes the constructor arguments both backends share, checks
them and keeps them, reports the capabilities, and holds the rules of their calls: how a
publish is prepared, which delay queues to remember, how a queue declaration is planned, when
a consumer is idle. The functions below it decide the copies a message is republished as (a
retry, a dead letter) and what the broker's answers mean. Each backend keeps only its I/O: an
I/O thread with a blocking connection (:mod:`~melange.backends.rabbitmq.backend`), or the
running event loop (:mod:`~melange.backends.rabbitmq.async_backend`). The declarations are
decided in :mod:`~melange.backends.rabbitmq.topology`, the message format in
:mod:`~melange.backends.rabbitmq.wire`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import pika

from melange.backends.interfaces import BackendCapabilities
from melange.backends.publish_options import publish_delay
from melange.backends.rabbitmq.connection import connection_parameters
from melange.backends.rabbitmq.topology import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DELAY_LADDER_MS,
    NOT_FOUND,
    Declaration,
    GiveBack,
    check_backend_settings,
    plan_queue,
    publish_delay_ms,
    publish_refused,
    queue_options,
    refuse_fifo,
)
from melange.backends.rabbitmq.wire import encode_body, to_properties
from melange.exceptions import MessageTooLargeError, TopicNotFoundError
from melange.models import Message, QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.rabbitmq")

#: A message as it is published: its body and its pika properties.
Item = tuple[bytes, pika.BasicProperties]


class RabbitMQBackendBase:
    """The settings, capabilities and bookkeeping of a RabbitMQ backend, without I/O.

    The arguments are those documented on
    :class:`~melange.backends.rabbitmq.backend.RabbitMQBackend`; they are checked here, so
    that both backends accept and refuse the same settings. A backend sets up its own state
    (and connects, if it does so at once) in :meth:`_setup`, which the constructor calls last.
    """

    loop_wait_seconds: float | None = 1.0

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        virtual_host: str | None = None,
        credentials: Any = None,
        username: str | None = None,
        password: str | None = None,
        heartbeat: int = 30,
        connection_attempts: int = 3,
        retry_delay: float = 1.0,
        socket_timeout: float = 5.0,
        queue_type: str | None = None,
        prefetch_count: int = 100,
        publisher_confirms: bool = True,
        require_topic_subscribers: bool = False,
        operation_timeout: float = 30.0,
        consumer_idle_timeout: float = 60.0,
        reconnect_max_delay: float = 10.0,
        connection_name: str | None = None,
        **parameters: Any,
    ) -> None:
        check_backend_settings(queue_type, prefetch_count, operation_timeout, consumer_idle_timeout)
        # Private: the credentials are in it.
        self._params = connection_parameters(
            url,
            host=host,
            port=port,
            virtual_host=virtual_host,
            credentials=credentials,
            username=username,
            password=password,
            heartbeat=heartbeat,
            connection_attempts=connection_attempts,
            retry_delay=retry_delay,
            socket_timeout=socket_timeout,
            connection_name=connection_name,
            extra=parameters,
        )
        params = self._params
        self.describe = f"{params.host}:{params.port}, vhost {params.virtual_host!r}"
        self._connection_attempts = connection_attempts
        self._retry_delay = retry_delay
        self._socket_timeout = socket_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._queue_type = queue_type
        self._prefetch_count = prefetch_count
        self._confirms = publisher_confirms
        self._require_subscribers = require_topic_subscribers
        self._operation_timeout = operation_timeout
        self._idle_timeout = consumer_idle_timeout
        self._buffers: dict[str, deque[Message]] = {}
        self._last_retrieve: dict[str, float] = {}
        self._interrupts = 0
        self._known_queues: set[str] = set()
        self._known_topics: set[str] = set()
        # Retry delays used per queue beyond the ladder (whole hours), to delete with it.
        self._retry_steps: dict[str, set[int]] = {}
        # The same for the delay queues of topics.
        self._topic_delay_steps: dict[str, set[int]] = {}
        self._warned_visibility = False
        self._setup()

    def _setup(self) -> None:
        """Set up the backend's own state once the settings are kept (connect, if at once)."""

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            name="rabbitmq",
            persistent=True,
            fifo=False,
            topics=True,
            native_dead_letter=self._queue_type != "classic",
            delayed_delivery=True,
            visibility_timeout=False,
            extend_visibility=False,
            receive_count=True,
            filter_policies=True,
            max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
            max_batch_size=None,
            delayed_publish=True,
            delayed_topic_publish=True,
        )

    @property
    def queue_type(self) -> str | None:
        """The queue type asked for: ``"quorum"``, ``"classic"`` or ``None`` (see
        :class:`~melange.backends.rabbitmq.backend.RabbitMQBackend`)."""
        return self._queue_type

    # -- topology -------------------------------------------------------------------------

    def _queue_plan(
        self,
        queue_name: str,
        topics: Sequence[TopicWrapper],
        dead_letter_queue: str | None,
        kwargs: Mapping[str, Any],
    ) -> list[Declaration]:
        """The declarations ``declare_queue`` performs (its options checked first)."""
        options = queue_options(queue_name, kwargs, self._queue_type, dead_letter_queue)
        if options.ignored_visibility_timeout and not self._warned_visibility:
            self._warned_visibility = True
            logger.info(
                "visibility_timeout is ignored by the RabbitMQ backend: a message stays with "
                "its consumer until settled, or until the consumer disconnects"
            )
        return plan_queue(queue_name, options, dead_letter_queue, [t.name for t in topics])

    def _declared(
        self, queue_name: str, dead_letter_queue: str | None, types: Mapping[str, str]
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """What ``declare_queue`` returns, once the queues of ``types`` were declared."""
        self._known_queues.update(types)
        dlq = dead_letter_queue
        return QueueWrapper(queue_name, queue_name), (
            QueueWrapper(dlq, dlq) if dlq is not None else None
        )

    def _note_retry_delay(self, queue_name: str, delay_ms: int) -> None:
        """Remember a retry queue off the ladder, so that ``delete_queue`` deletes it too."""
        if delay_ms not in DELAY_LADDER_MS:
            self._retry_steps.setdefault(queue_name, set()).add(delay_ms)

    def _note_topic_delay(self, topic_name: str, delay_ms: int) -> None:
        """Remember a topic's delay queue off the ladder, for ``delete_topic``."""
        if delay_ms not in DELAY_LADDER_MS:
            self._topic_delay_steps.setdefault(topic_name, set()).add(delay_ms)

    # -- consuming ------------------------------------------------------------------------

    def _consume_budget(self, wait: float) -> float:
        """How long starting to consume may take: while the broker is unreachable, a call
        fails soon after the caller's own wait, so that a consume loop stays responsive to
        ``stop()`` and reports the outage."""
        return min(self._operation_timeout, max(wait, 1.0) + 5.0)

    def _idle(self, queue_name: str, unsettled: int, now: float) -> bool:
        """Whether to stop consuming ``queue_name``: nobody retrieved from it for
        ``consumer_idle_timeout`` seconds, and each of its ``unsettled`` messages is still in
        the buffer (closing the channel would also hand back messages being processed)."""
        if now - self._last_retrieve.get(queue_name, now) < self._idle_timeout:
            return False
        buffered = self._buffers.get(queue_name)
        return unsettled == (len(buffered) if buffered else 0)

    def _drop_buffered_of(self, queue_name: str, consumer: object) -> None:
        """Drop the buffered messages ``consumer`` received: the broker delivers them again."""
        buffer = self._buffers.get(queue_name)
        if buffer:
            kept = [m for m in buffer if m.metadata.consumer is not consumer]
            buffer.clear()
            buffer.extend(kept)


def receive_options(kwargs: Mapping[str, Any]) -> tuple[int, float]:
    """``retrieve_messages``' ``max_messages`` (default 10) and ``wait_seconds`` (default 0)."""
    return int(kwargs.get("max_messages") or 10), float(kwargs.get("wait_seconds") or 0.0)


def publish_items(
    destination: str, messages: Sequence[Message], kwargs: Mapping[str, Any]
) -> tuple[list[Item], int] | None:
    """What a publish to ``destination`` sends: the encoded ``messages`` and the delay, in
    milliseconds (0 for none), rounded up to the retry ladder; ``None`` when there are no
    messages. FIFO keywords, a bad ``delay_seconds`` and a message over RabbitMQ's size limit
    are refused before anything is sent."""
    refuse_fifo(destination, messages, kwargs)
    delay = publish_delay(kwargs, backend="the RabbitMQ backend")
    if not messages:
        return None
    items = []
    for message in messages:
        body = encode_body(message.content)
        if len(body) > DEFAULT_MAX_MESSAGE_SIZE:
            raise MessageTooLargeError(len(body), DEFAULT_MAX_MESSAGE_SIZE, "RabbitMQ")
        items.append((body, to_properties(message)))
    return items, publish_delay_ms(delay) if delay is not None else 0


def topic_publish_refused(code: int, text: str, topic_name: str) -> Exception:
    """The broker closed the channel of a topic publish: the exchange is missing, or it
    refused the message."""
    if code == NOT_FOUND:
        return TopicNotFoundError(topic_name)
    return publish_refused(code, text, f"topic {topic_name!r}")


def give_back_copy(message: Message, plan: GiveBack) -> Item:
    """The copy of ``message`` that hands it back as ``plan`` says."""
    return encode_body(message.content), to_properties(message, deliveries=plan.deliveries)


def dead_letter_copy(message: Message, headers: Mapping[str, str]) -> Item:
    """The copy of ``message`` its dead-letter queue receives, with ``headers``."""
    return encode_body(message.content), to_properties(
        message, deliveries=message.attempt or 1, extra_headers=dict(headers)
    )


def give_back_refused(message: Message, target: str, refused: str) -> None:
    """The copy that hands ``message`` back did not land: the original is requeued."""
    logger.error(
        "could not hand message %s back to %s (%s); returning it to the queue now",
        message.message_id,
        target,
        refused,
    )


def dead_lettered(result: bool | None, message: Message) -> bool:
    """What ``dead_letter`` returns when its settlement returned ``result`` (``None``: the
    connection was reset since the message was received, and the broker delivers it again)."""
    if result is None:
        logger.warning(
            "message %s could not be dead-lettered now: the connection was reset since it "
            "was received; the broker delivers it again",
            message.message_id,
        )
        return True
    return bool(result)
