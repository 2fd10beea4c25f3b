"""The NATS JetStream backend on asyncio: :class:`AsyncNATSBackend`, on nats-py.

Queues are work-queue streams, each with one durable pull consumer; topics are streams whose
messages the server copies into the streams of the queues subscribed to them (see
:mod:`melange.backends.nats.topology` for the layout, :mod:`melange.backends.nats.wire` for
the message format). :class:`~melange.backends.nats.backend.NATSBackend` is the same backend
behind the blocking contract.

- Publishing waits for JetStream's acknowledgement (the message is stored), which comes to
  the backend's inbox subscription like the answers to its pull requests; a batch is
  pipelined and waits for all of them at once. ``deduplication_id`` becomes ``Nats-Msg-Id``:
  the stream drops a second publish with that id within its duplicate window.
- Receiving sends a pull request answered at once with what is there (``wait_seconds``
  0); a receive that waits sends one that also takes what comes while messages keep coming,
  up to ``max_messages``, and expires after ``_LINGER`` (none is left open for long, whose
  deliveries would wait for a later receive), and, when nothing came, one that waits up to
  ``wait_seconds`` for the next message.
- A received message is leased for the queue's ``visibility_timeout`` (the consumer's
  ``ack_wait``): ``acknowledge`` deletes it, ``nack(delay=...)`` gives it back after the delay
  (``-NAK`` with a delay), ``extend_visibility`` renews the lease (``+WPI``, repeated for a
  renewal longer than the lease), and an unsettled message comes back when its lease ends.
  Acknowledgements do not depend on the connection: a message received before a reconnect
  can be settled after it.
- After ``max_receive_count`` deliveries, the next delivery of a message is moved to the
  queue's dead-letter queue with failure headers instead of being handed out; the consumer's
  ``max_deliver`` stops the server from delivering it more often than that.
- FIFO queues (``.fifo``) hand out one message at a time (``max_ack_pending=1``): a message
  waits until the one before it, of any group, was settled, so each group keeps its order.

Use one instance from one event loop; only :meth:`~AsyncNATSBackend.interrupt` may be called
from other threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import api
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the NATS backend needs nats-py ({exc}): pip install 'melange[nats]'"
    ) from exc

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import BackendCapabilities
from melange.backends.nats.connection import connect_options, explain, server_address
from melange.backends.nats.topology import (
    CONSUMER,
    DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_TOPIC_MAX_AGE,
    DEFAULT_VISIBILITY_TIMEOUT,
    Names,
    QueueOptions,
    QueueSettings,
    check_prefix,
    consumer_config,
    queue_options,
    source_filters,
)
from melange.backends.nats.wire import (
    backstop_headers,
    decode_message,
    encode_body,
    encode_headers,
    manifest_of,
)
from melange.backends.publish_options import apply_undelayed_publish_keywords
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.nats")

T = TypeVar("T")

#: Largest message a NATS server takes by default (its ``max_payload``).
DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: Seconds a waiting receive goes on collecting after a message came, while more keep coming.
_LINGER = 0.005
#: Seconds a lingering receive on a loop of its caller's gives the loop to read what came
#: while it slept (see _linger).
_READ_PAUSE = 0.001
#: Seconds a publish waits for JetStream's acknowledgement (then it is repeated: see _run).
_PUBLISH_TIMEOUT = 5.0
#: Seconds the server keeps an immediate pull request open when it cannot answer it at once.
_IMMEDIATE_PULL_EXPIRES = 0.2
#: Turns of the loop :meth:`AsyncNATSBackend.flushed` waits, at most, for the client's writer.
_FLUSH_TURNS = 10
#: Seconds closing waits, at most, for the server to confirm the acknowledgements sent.
_CLOSE_FLUSH_TIMEOUT = 5.0
#: Seconds between the looks closing takes at the connection while it waits for that.
_CLOSE_FLUSH_LOOK = 0.02
#: Rounds of giving back late deliveries and confirming, at most, when closing.
_CLOSE_ROUNDS = 3
#: Seconds between the pull markers of a receive waiting for its first message.
_MARK_EVERY = 0.1
#: The last token of the pull markers' subject, on the backend's inbox (see read_in_calls_only).
_MARK = "mark"
#: JetStream's error code for "stream name already in use" (with another configuration).
_STREAM_EXISTS = 10058
#: Errors after which an operation is worth repeating on a (re)connected client.
_RETRYABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
    OSError,
)

#: Errors of sending an acknowledgement: the message comes back when its lease ends.
_SEND_ERRORS: tuple[type[BaseException], ...] = (*_RETRYABLE, BackendConnectionError)


_BACKEND = "the NATS backend"


@dataclass(eq=False)
class NATSReceipt:
    """What a received message needs to be settled: its queue and JetStream ack subject.

    Opaque to users; kept in :attr:`~melange.models.Message.metadata`. ``leased_until`` is
    when, by this process's clock, the server gives the message to another receiver unless
    it is settled or renewed.
    """

    queue: str
    reply: str
    sequence: int
    delivered: int
    lease: float
    leased_until: float
    settled: bool = False
    renewal: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(eq=False)
class _Pull:
    """One pull request waiting for its messages (collected by the inbox subscription).

    ``first`` is done once a message (or the end) came, ``done`` once the request is over.
    """

    queue: str
    batch: int
    done: asyncio.Future[None]
    first: asyncio.Future[None]
    messages: list[Msg] = field(default_factory=list)
    #: When the lease of each message began, at the earliest (see ``_lease_start``).
    starts: list[float] = field(default_factory=list)

    def end(self) -> None:
        for future in (self.first, self.done):
            if not future.done():
                future.set_result(None)


def nats_capabilities(storage: str, max_payload: int) -> BackendCapabilities:
    """What the NATS backend can do, with ``storage`` and the server's ``max_payload``."""
    return BackendCapabilities(
        name="nats",
        persistent=storage == "file",
        fifo=True,
        topics=True,
        native_dead_letter=True,
        delayed_delivery=True,
        visibility_timeout=True,
        extend_visibility=True,
        receive_count=True,
        filter_policies=True,
        # Room for the headers.
        max_message_size=max_payload - 4096,
        max_batch_size=None,
    )


class AsyncNATSBackend(AsyncMessagingBackend):
    """A messaging backend on NATS JetStream with asyncio-native I/O (via nats-py).

    Args:
        url: The server, ``nats://host:4222`` (default ``nats://127.0.0.1:4222``), or several
            comma-separated; ``nats://user:password@host:4222`` for credentials.
        prefix: Starts every stream name and subject this backend uses, so that several
            applications (or tests) share a server without meeting.
        visibility_timeout: Default lease of a received message, in seconds (the consumer's
            ``ack_wait``); ``declare_queue(visibility_timeout=...)`` sets it per queue.
        max_ack_pending: Messages of a queue handed out and not yet settled, at most, across
            all receivers (FIFO queues: 1).
        duplicate_window: Seconds a queue stream remembers a ``Nats-Msg-Id``.
        topic_max_age: Seconds a topic stream keeps its messages.
        storage: ``"file"`` (persistent) or ``"memory"``.
        operation_timeout: Seconds an operation may take, reconnections included, before it
            raises :class:`~melange.exceptions.BackendConnectionError`.
        connection_name: The client name the server shows.
        **options: Further keyword arguments of ``nats.connect`` (``tls``, ``user_credentials``...).
    """

    name = "nats"
    loop_wait_seconds = 1.0
    #: The server's largest message, learnt when connecting.
    _max_payload: int = DEFAULT_MAX_PAYLOAD

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        prefix: str = "melange",
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        topic_max_age: float = DEFAULT_TOPIC_MAX_AGE,
        storage: str = "file",
        connect_timeout: float = 5.0,
        reconnect_time_wait: float = 0.5,
        max_reconnect_attempts: int = -1,
        operation_timeout: float = 30.0,
        connection_name: str | None = None,
        **options: Any,
    ) -> None:
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"NATS storage must be 'file' or 'memory', not {storage!r}")
        if visibility_timeout <= 0 or max_ack_pending < 1:
            raise ConfigurationError(
                "NATS visibility_timeout must be positive and max_ack_pending at least 1"
            )
        self._address = server_address(url)
        self.describe = self._address.describe
        self.names = Names(check_prefix(prefix))
        self.visibility_timeout = float(visibility_timeout)
        self._max_ack_pending = int(max_ack_pending)
        self._duplicate_window = float(duplicate_window)
        self._topic_max_age = float(topic_max_age)
        self._storage = storage
        self._operation_timeout = float(operation_timeout)
        self._connect_timeout = float(connect_timeout)
        self._connect_options = connect_options(
            self._address,
            name=connection_name,
            connect_timeout=connect_timeout,
            reconnect_time_wait=reconnect_time_wait,
            max_reconnect_attempts=max_reconnect_attempts,
            extra=options,
        )
        # Logged by this backend, which knows whether it is closing.
        self._connect_options["disconnected_cb"] = self._on_disconnected
        self._connect_options["reconnected_cb"] = self._on_reconnected
        self._nc: Client | None = None
        self._js: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._closed = False
        self._inbox = ""
        # Whether an acknowledgement or a pull request went out that no ping confirmed since
        # (see _confirm_sent).
        self._unconfirmed = False
        # The subscription to the answers of the pull requests (see _client).
        self._answers: Subscription | None = None
        # The pull request under way for each queue stream, and each by its serial number.
        self._pulls: dict[str, _Pull] = {}
        self._pull_serials: dict[str, _Pull] = {}
        self._pull_locks: dict[str, asyncio.Lock] = {}
        self._pull_serial = 0
        # Publishes waiting for their acknowledgement, by the last token of their reply
        # subject on the inbox (see _publish_one).
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._reply_serial = 0
        # Messages that reached a pull request that had already returned (an interrupted
        # wait), handed out by the next receive while their lease lasts.
        self._leftovers: dict[str, deque[Message]] = {}
        # The stream sequence and timestamp of the latest first delivery (delivery count 1)
        # received from each queue. The server delivers new messages in stream order, so a
        # first delivery of a message at or before that one is a repeat: nats-server before
        # 2.10.16 steps its consumer back when a pull request expires while a redelivery is
        # being sent to it, and then delivers the last new message again with count 1, while
        # the lease of its last delivery runs, or after that delivery was acknowledged and
        # before the server processed the acknowledgement (it reads acknowledgements apart
        # from pull requests). That message is not handed out again: the server settles a
        # message whichever of its deliveries is acknowledged (or renewed, or given back),
        # and delivers it again, with its true count, if none is. The timestamp tells a
        # stream deleted and made again apart. Shared by the connections of one NATSBackend.
        self._firsts: dict[str, tuple[int, datetime]] = {}
        self._settings: dict[str, QueueSettings] = {}
        # Queues whose max_deliver advisories this backend listens to.
        self._watched: set[str] = set()
        self._known_topics: set[str] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self._interrupts = 0
        self._interrupt_lock = threading.Lock()
        # None while the connection is read continuously; else the earliest time a message
        # read from now on can have been sent (see read_in_calls_only).
        self._horizon: float | None = None

    def read_in_calls_only(self) -> None:
        """Declare that this backend's connection is read only while one of its calls runs
        (on an event loop its caller drives: see :mod:`melange.backends.nats.backend`).

        A message can then wait unread in the socket between calls, and its lease began
        when the server sent it, not when it is read. Each receive sends a marker before its
        first pull request (and then every ``_MARK_EVERY`` seconds while it waits), which
        the server echoes in order with the deliveries: a message read after a marker was
        sent after it, so its lease is timed from the last marker read before it, and a
        message with less than half its lease left is not handed out (it comes back when
        its lease ends).

        And since nothing else runs on that loop, a receive waiting for the rest of a batch
        sleeps, without reading, and then reads what came in one go, instead of waking for
        each message.
        """
        if self._connect_options.get("no_echo"):
            raise ConfigurationError("NATS pull markers need the server to echo them")
        self._horizon = time.monotonic()

    def __repr__(self) -> str:
        return f"AsyncNATSBackend({self.describe}, prefix={self.names.prefix!r})"

    @property
    def capabilities(self) -> BackendCapabilities:
        return nats_capabilities(self._storage, self._max_payload)

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now (calls connect when needed)."""
        await self._client()

    async def __aenter__(self) -> AsyncNATSBackend:
        await self.connect()
        return self

    async def _client(self) -> Client:
        nc = self._nc
        if nc is not None and not nc.is_closed:
            return nc
        if self._closed:
            raise BackendConnectionError(f"the NATS backend for {self.describe} is closed")
        loop = asyncio.get_running_loop()
        if self._connect_lock is None or self._loop is not loop:
            self._connect_lock = asyncio.Lock()
            self._loop = loop
        async with self._connect_lock:
            nc = self._nc
            if nc is not None and not nc.is_closed:
                return nc
            # nats-py would try a first connection for ever when reconnecting is unbounded.
            budget = self._connect_timeout * 2 + 1.0
            try:
                nc = await asyncio.wait_for(nats.connect(**self._connect_options), budget)
            except TimeoutError:
                raise BackendConnectionError(
                    f"could not connect to NATS at {self.describe} within {budget:.0f}s"
                ) from None
            except Exception as exc:
                raise BackendConnectionError(
                    f"could not connect to NATS at {self.describe}: {explain(exc)}"
                ) from None
            self._max_payload = nc.max_payload or DEFAULT_MAX_PAYLOAD
            self._inbox = nc.new_inbox()
            # One subscription for every pull request's answers: <inbox>.<serial>.
            self._answers = await nc.subscribe(f"{self._inbox}.*", cb=self._on_pulled)
            self._js = nc.jetstream(timeout=min(10.0, self._operation_timeout))
            self._nc = nc
            self._watched.clear()
            return nc

    async def _on_disconnected(self) -> None:
        if not self._closed:
            logger.warning("connection to NATS at %s lost; reconnecting", self.describe)

    async def _on_reconnected(self) -> None:
        logger.warning("reconnected to NATS at %s", self.describe)

    async def _run(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``fn`` with the client, again while the connection is being re-established.

        Operations are safe to repeat: declarations are idempotent, and a repeated publish
        may duplicate a message (at-least-once), unless it has a deduplication id.
        """
        deadline = time.monotonic() + self._operation_timeout
        while True:
            nc = await self._client()
            try:
                return await fn(nc)
            except _RETRYABLE as exc:
                if self._closed or time.monotonic() >= deadline:
                    raise BackendConnectionError(
                        f"NATS at {self.describe} did not complete the operation within "
                        f"{self._operation_timeout:.0f}s: {explain(exc)}"
                    ) from None
                logger.debug("NATS operation failed (%s); repeating it", explain(exc))
                await asyncio.sleep(0.1)

    async def _api(self, nc: Client, subject: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """A JetStream API request; raises ``nats.js.errors.APIError`` for an error answer."""
        try:
            reply = await nc.request(
                f"$JS.API.{subject}", json.dumps(request).encode(), timeout=5.0
            )
        except nats.errors.NoRespondersError:
            raise nats.js.errors.ServiceUnavailableError from None
        answer: dict[str, Any] = json.loads(reply.data)
        if "error" in answer:
            raise nats.js.errors.APIError.from_error(answer["error"])
        return answer

    # -- topology ---------------------------------------------------------------------------

    async def _stream_info(self, stream: str) -> Any | None:
        async def op(_nc: Client) -> Any:
            try:
                return await self._js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return None

        return await self._run(op)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the topic's stream (idempotent)."""
        stream = self.names.topic_stream(topic_name)
        config = api.StreamConfig(
            name=stream,
            subjects=[self.names.topic_subjects(topic_name)],
            retention=api.RetentionPolicy.LIMITS,
            max_age=self._topic_max_age,
            storage=api.StorageType(self._storage),
            duplicate_window=self._duplicate_window,
        )
        await self._ensure_stream(config)
        self._known_topics.add(topic_name)
        return TopicWrapper(stream, topic_name)

    async def _ensure_stream(self, config: Any) -> None:
        async def op(_nc: Client) -> None:
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_EXISTS:
                    raise BackendError(
                        f"NATS at {self.describe} refused stream {config.name}: {exc.description}"
                    ) from None
                await self._js.update_stream(config)

        await self._run(op)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        stream = self.names.topic_stream(topic_name)
        if topic_name not in self._known_topics:
            if await self._stream_info(stream) is None:
                raise TopicNotFoundError(topic_name)
            self._known_topics.add(topic_name)
        return TopicWrapper(stream, topic_name)

    async def _queue_settings(self, queue_name: str, fresh: bool = False) -> QueueSettings:
        settings = self._settings.get(queue_name)
        if settings is None or fresh:
            info = await self._stream_info(self.names.queue_stream(queue_name))
            if info is None:
                self._settings.pop(queue_name, None)
                raise QueueNotFoundError(queue_name)
            settings = QueueSettings.read(queue_name, info.config.description)
            self._settings[queue_name] = settings
        return settings

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        await self._queue_settings(queue_name)
        return QueueWrapper(self.names.queue_stream(queue_name), queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue's stream and consumer (idempotent) and subscribe it to topics.

        Options: ``visibility_timeout`` (seconds), ``max_receive_count`` (deliveries before
        a message goes to the dead-letter queue), ``filter_events`` (manifests a topic's
        messages must have to reach the queue), ``max_ack_pending``, ``fifo`` (default: the
        name ends with ``.fifo``).
        """
        options = queue_options(queue_name, kwargs, self.visibility_timeout, self._max_ack_pending)
        dlq_wrapper = None
        if dead_letter_queue_name is not None:
            dlq_wrapper, _ = await self.declare_queue(
                dead_letter_queue_name, visibility_timeout=options.visibility_timeout
            )
        stream = self.names.queue_stream(queue_name)
        existing = await self._stream_info(stream)
        sources: dict[tuple[str, str | None], Any] = {}
        filters: dict[str, tuple[str, ...]] = {}
        if existing is not None:
            for source in existing.config.sources or ():
                sources[(source.name, source.filter_subject)] = source
            filters.update(QueueSettings.read(queue_name, existing.config.description).filters)
        for topic in topics_to_bind:
            await self._bind(topic.name, options, sources, filters)
        settings = QueueSettings(
            queue=queue_name,
            dead_letter_queue=dead_letter_queue_name,
            max_receive_count=options.max_receive_count,
            visibility_timeout=options.visibility_timeout,
            fifo=options.fifo,
            filters=filters,
        )
        config = api.StreamConfig(
            name=stream,
            description=settings.describe(),
            subjects=[self.names.queue_subject(queue_name)],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType(self._storage),
            duplicate_window=self._duplicate_window,
            sources=list(sources.values()) or None,
        )
        await self._ensure_stream(config)
        await self._ensure_consumer(stream, options, dead_letter_queue_name is not None)
        self._settings[queue_name] = settings
        return QueueWrapper(stream, queue_name), dlq_wrapper

    async def _bind(
        self,
        topic: str,
        options: QueueOptions,
        sources: dict[tuple[str, str | None], Any],
        filters: dict[str, tuple[str, ...]],
    ) -> None:
        """Add the source copying ``topic``'s messages into the queue (from now on)."""
        topic_stream = self.names.topic_stream(topic)
        subject = source_filters(self.names, topic, options.filter_events)
        for key in [k for k in sources if k[0] == topic_stream and k[1] != subject]:
            del sources[key]  # subscribed before with another filter: that one goes
        filters[topic] = options.filter_events
        if (topic_stream, subject) in sources:
            return  # already subscribed: its source keeps its place in the topic
        info = await self._stream_info(topic_stream)
        if info is None:
            raise TopicNotFoundError(topic)
        sources[(topic_stream, subject)] = api.StreamSource(
            name=topic_stream, filter_subject=subject, opt_start_seq=info.state.last_seq + 1
        )

    async def _ensure_consumer(self, stream: str, options: QueueOptions, has_dlq: bool) -> None:
        config = api.ConsumerConfig(**consumer_config(options, has_dlq))

        async def op(_nc: Client) -> None:
            try:
                await self._js.add_consumer(stream, config)
            except nats.js.errors.BadRequestError as exc:
                # An existing consumer whose settings cannot change (the server keeps them).
                logger.warning(
                    "NATS kept the consumer of %s as it was: %s", stream, exc.description
                )

        await self._run(op)

    async def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue's stream, its messages and its consumer (not its dead-letter
        queue)."""
        stream = self.names.queue_stream(queue.name)

        async def op(_nc: Client) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._js.delete_stream(stream)

        await self._run(op)
        self._settings.pop(queue.name, None)
        self._leftovers.pop(queue.name, None)
        self._firsts.pop(queue.name, None)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic's stream and the queues' sources on it."""
        topic_stream = self.names.topic_stream(topic.name)
        for stream in await self._stream_names(f"{self.names.prefix}_q_"):
            info = await self._stream_info(stream)
            if info is None or not any(s.name == topic_stream for s in info.config.sources or ()):
                continue
            config = info.config
            config.sources = [s for s in config.sources if s.name != topic_stream] or None
            await self._ensure_stream(config)

        async def op(_nc: Client) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._js.delete_stream(topic_stream)

        await self._run(op)
        self._known_topics.discard(topic.name)

    async def _stream_names(self, start: str) -> list[str]:
        """The names of the streams that start with ``start``."""

        async def op(nc: Client) -> list[str]:
            names: list[str] = []
            offset = 0
            while True:
                answer = await self._api(nc, "STREAM.NAMES", {"offset": offset})
                page = answer.get("streams") or []
                names.extend(n for n in page if n.startswith(start))
                offset += len(page)
                if not page or offset >= int(answer.get("total", 0)):
                    return names

        return await self._run(op)

    # -- publishing -------------------------------------------------------------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        apply_undelayed_publish_keywords([message], kwargs, backend=_BACKEND)
        await self._publish(self.names.queue_subject(queue.name), [message], queue.name, None)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        apply_undelayed_publish_keywords(messages, kwargs, backend=_BACKEND)
        subject = self.names.queue_subject(queue.name)
        await self._publish(subject, messages, queue.name, None, batch=True)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        apply_undelayed_publish_keywords([message], kwargs, backend=_BACKEND)
        await self._publish(None, [message], None, topic.name)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        apply_undelayed_publish_keywords(messages, kwargs, backend=_BACKEND)
        await self._publish(None, messages, None, topic.name, batch=True)

    async def _publish(
        self,
        subject: str | None,
        messages: Sequence[Message],
        queue: str | None,
        topic: str | None,
        batch: bool = False,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not messages:
            return
        items: list[tuple[str, bytes, dict[str, str]]] = []
        for message in messages:
            body = encode_body(message.content)
            headers = encode_headers(message, extra_headers)
            size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
            if size > self._max_payload:
                raise MessageTooLargeError(size, self._max_payload, "NATS")
            target = subject or self.names.topic_subject(str(topic), message.manifest)
            items.append((target, body, headers))

        async def op(nc: Client) -> list[str | None]:
            if len(items) == 1:
                [(target, body, headers)] = items
                return [await self._publish_one(nc, target, body, headers)]
            published = (self._publish_one(nc, t, b, h) for t, b, h in items)
            return list(await asyncio.gather(*published))

        outcome = await self._run(op)
        if any(reason == _NO_STREAM for reason in outcome):
            if topic is not None:
                self._known_topics.discard(topic)
                raise TopicNotFoundError(topic)
            self._settings.pop(str(queue), None)
            raise QueueNotFoundError(str(queue))
        failures = {i: reason for i, reason in enumerate(outcome) if reason is not None}
        if failures:
            if batch:
                raise BatchPublishError(failures)
            raise PublishError(f"NATS refused the message: {failures[0]}")

    async def _publish_one(
        self, nc: Client, subject: str, body: bytes, headers: dict[str, str]
    ) -> str | None:
        """Publish and wait for JetStream's acknowledgement; ``None``, or why it was refused.

        The acknowledgement comes to the backend's inbox subscription, as the answers to its
        pull requests do, and wakes this call directly: nats-py's ``request`` costs a turn
        of the loop more (its ``wait_for``) and draws random bytes for each reply subject.
        """
        self._reply_serial += 1
        token = f"p{self._reply_serial}"
        answered: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._replies[token] = answered
        try:
            await nc.publish(subject, body, reply=f"{self._inbox}.{token}", headers=headers)
            async with asyncio.timeout(_PUBLISH_TIMEOUT):
                reply = await answered
        except nats.errors.MaxPayloadError:
            return "larger than the server's max_payload"
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            self._replies.pop(token, None)
        if not reply.data and reply.headers and reply.headers.get("Status") == _NO_RESPONDERS:
            return _NO_STREAM
        try:
            answer = json.loads(reply.data)
        except ValueError:
            return f"unexpected answer {reply.data[:80]!r}"
        error = answer.get("error")
        if error:
            return f"{error.get('code')} {error.get('description')}"
        return None

    # -- consuming --------------------------------------------------------------------------

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10) messages of ``queue``, waiting up to
        ``wait_seconds`` (default 0) for the first; :meth:`interrupt` ends the wait early.

        While the server cannot be reached, it raises
        :class:`~melange.exceptions.BackendConnectionError` a few seconds after the caller's
        own wait, so that a consume loop reports the outage and stays responsive to a stop.
        """
        max_messages = max(1, int(kwargs.get("max_messages") or 10))
        wait = float(kwargs.get("wait_seconds") or 0.0)
        budget = min(self._operation_timeout, max(wait, 1.0) + 5.0)
        try:
            # A timeout scope, not wait_for: no task of its own, so the acknowledgements sent
            # just before go out in the same write as this receive's pull request.
            async with asyncio.timeout(budget):
                return await self._retrieve(queue, max_messages, wait)
        except TimeoutError:
            raise BackendConnectionError(
                f"NATS at {self.describe} did not answer a receive from {queue.name!r} within "
                f"{budget:.0f}s"
            ) from None

    async def _retrieve(self, queue: QueueWrapper, max_messages: int, wait: float) -> list[Message]:
        interrupts = self._interrupts
        name = queue.name
        settings = await self._queue_settings(name)
        if settings.fifo:
            max_messages = 1  # one message of a FIFO queue out at a time (max_ack_pending)
        if settings.dead_letter_queue is not None and name not in self._watched:
            await self._watch_max_deliveries(name)
        out = self._fresh_leftovers(name, max_messages)
        if out:
            return out
        deadline = time.monotonic() + wait
        mark = True  # one marker a receive (see read_in_calls_only): this call reads all along
        while True:
            if wait > 0 and self._interrupts == interrupts and not self._closed:
                # A short request first: answered with what is there, then with what comes
                # while messages keep coming (a caller that waits accepts that linger),
                # rather than come back for each one; it expires after _LINGER, so none is
                # left open whose deliveries would wait for a later receive.
                pulled = await self._pull(name, max_messages, _LINGER, interrupts, mark)
                remaining = deadline - time.monotonic()
                if not pulled.messages and remaining > 0.05 and self._interrupts == interrupts:
                    # Wait for the first message, and for more while they keep coming.
                    pulled = await self._pull(name, max_messages, remaining, interrupts)
            else:
                pulled = await self._pull(name, max_messages, None, mark=mark)
            mark = False
            out = await self._accept(settings, pulled.messages, pulled.starts)
            if out or not pulled.messages:
                return out + self._fresh_leftovers(name, max_messages - len(out))
            # Everything pulled was dead-lettered or filtered out: look again.

    async def _pull(
        self,
        queue: str,
        batch: int,
        wait: float | None,
        interrupts: int | None = None,
        mark: bool = False,
    ) -> _Pull:
        """Send a pull request for ``batch`` messages: answered at once (``wait`` None) or
        held by the server up to ``wait`` seconds for the first message."""
        stream = self.names.queue_stream(queue)
        # The server answers an immediate request within its expiry: no answer in a few
        # seconds means it was lost with a connection (then _run asks again).
        budget = _IMMEDIATE_PULL_EXPIRES + 5.0 if wait is None else wait + 1.0

        async def op(nc: Client) -> _Pull:
            loop = asyncio.get_running_loop()
            lock = self._pull_locks.get(stream)
            if lock is None:
                lock = self._pull_locks[stream] = asyncio.Lock()
            # One pull request of this backend per queue at a time: JetStream delivers the
            # messages on their own subjects, so they are told apart by their stream.
            async with lock:
                self._pull_serial += 1
                serial = str(self._pull_serial)
                pull = _Pull(queue, batch, loop.create_future(), loop.create_future())
                self._pulls[stream] = pull
                self._pull_serials[serial] = pull
                request: dict[str, Any] = {"batch": batch}
                if wait is None:
                    # Answered at once, with a 404 when fewer messages are there; the expiry
                    # ends it (408) when max_ack_pending holds the messages back instead.
                    request["no_wait"] = True
                    request["expires"] = int(_IMMEDIATE_PULL_EXPIRES * 1e9)
                else:
                    request["expires"] = int(max(_LINGER, wait) * 1e9)
                waiter: asyncio.Future[None] | None = None
                try:
                    if mark:
                        await self._mark(nc)
                    await nc.publish(
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}",
                        json.dumps(request).encode(),
                        reply=f"{self._inbox}.{serial}",
                    )
                    self._unconfirmed = True
                    if wait is None:
                        await _collect(pull, budget)
                    else:
                        # Also woken by interrupt(): the request stays with the server, and
                        # what it still brings becomes a leftover for the next receive.
                        waiter = loop.create_future()
                        self._waiters.add(waiter)
                        if interrupts is None or interrupts == self._interrupts:
                            await self._wait_first(nc, pull, waiter, budget)
                        if pull.messages and not waiter.done():
                            # The rest of the batch, while messages keep coming; what the
                            # request brings after that is a leftover for the next receive.
                            await _linger(pull, _LINGER, asleep=self._horizon is not None)
                except TimeoutError:
                    raise nats.errors.TimeoutError from None
                finally:
                    if waiter is not None:
                        self._waiters.discard(waiter)
                    pull.end()
                    self._pull_serials.pop(serial, None)
                    if self._pulls.get(stream) is pull:
                        del self._pulls[stream]
                return pull

        return await self._run(op)

    async def _mark(self, nc: Client) -> None:
        """Send a pull marker, when this connection is read in calls only (see
        read_in_calls_only); the marker carries the time it was sent."""
        if self._horizon is not None:
            await nc.publish(f"{self._inbox}.{_MARK}", repr(time.monotonic()).encode())

    async def _wait_first(
        self, nc: Client, pull: _Pull, waiter: asyncio.Future[None], budget: float
    ) -> None:
        """Wait up to ``budget`` seconds for the first message of ``pull`` or an interrupt.

        On a connection read in calls only, a marker goes out every ``_MARK_EVERY`` seconds
        meanwhile: what comes during a long wait has its lease timed from the last one, not
        from the start of the receive.
        """
        deadline = time.monotonic() + budget
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            pause = remaining if self._horizon is None else min(remaining, _MARK_EVERY)
            done, _ = await asyncio.wait(
                (pull.first, waiter), timeout=pause, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                return
            await self._mark(nc)

    async def _on_pulled(self, msg: Msg) -> None:
        """A message (or the server's status) answering one of our pull requests."""
        if not msg.reply:
            token = msg.subject.rsplit(".", 1)[-1]
            answered = self._replies.pop(token, None)
            if answered is not None:  # a publish's acknowledgement (see _publish_one)
                if not answered.done():
                    answered.set_result(msg)
                return
            if token == _MARK:
                self._horizon = float(msg.data)
                return
            # A status on the request's own inbox: 404 no messages, 408 request expired, 409
            # consumer gone or too many waiting requests. The request is over.
            ended = self._pull_serials.get(token)
            if ended is not None:
                ended.end()
            return
        since = self._lease_start()
        stream = msg.metadata.stream
        pull = self._pulls.get(stream)
        if pull is not None and not pull.done.done():
            pull.messages.append(msg)
            pull.starts.append(since)
            if not pull.first.done():
                pull.first.set_result(None)
            if len(pull.messages) >= pull.batch:
                pull.done.set_result(None)
            return
        # A late answer to a request that already returned.
        queue = self.names.queue_of_stream(stream)
        settings = self._settings.get(queue or "")
        if queue is None or settings is None:
            return  # redelivered when its lease ends
        for message in await self._accept(settings, [msg], [since]):
            self._leftovers.setdefault(queue, deque()).append(message)
        self._notify()

    async def _watch_max_deliveries(self, queue: str) -> None:
        """Listen to the server's advisory for a message of ``queue`` that reached
        ``max_deliver`` while nobody moved it (its receiver died holding the last delivery):
        the server sends it when a later pull finds the message, and one listener of the
        queue group (in any process) moves the message to the dead-letter queue."""
        stream = self.names.queue_stream(queue)

        async def op(nc: Client) -> None:
            await nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{CONSUMER}",
                queue=f"{self.names.prefix}-dead-letters",
                cb=self._on_max_deliveries,
            )

        await self._run(op)
        self._watched.add(queue)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, sequence = str(advisory["stream"]), int(advisory["stream_seq"])
            queue = self.names.queue_of_stream(stream)
            if queue is None:
                return
            settings = await self._queue_settings(queue)
            if settings.dead_letter_queue is None:
                return
            nc = await self._client()
            try:
                answer = await self._api(nc, f"STREAM.MSG.GET.{stream}", {"seq": sequence})
            except nats.js.errors.NotFoundError:
                return  # settled meanwhile
            message = _stored_message(api.RawStreamMsg.from_response(answer["message"]))
            deliveries = int(advisory.get("deliveries") or settings.max_receive_count + 1)
            dlq = settings.dead_letter_queue
            headers = backstop_headers(queue, deliveries)
            await self._publish(self.names.queue_subject(dlq), [message], dlq, None, False, headers)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._api(nc, f"STREAM.MSG.DELETE.{stream}", {"seq": sequence})
            logger.warning(
                "message %s of %s reached its delivery limit unsettled: moved to %s",
                message.message_id,
                queue,
                dlq,
            )
        except Exception as exc:  # a callback of the client: report, never raise
            logger.error("could not dead-letter a message past max_deliver: %s", explain(exc))

    def _fresh_leftovers(self, queue: str, limit: int) -> list[Message]:
        buffer = self._leftovers.get(queue)
        out: list[Message] = []
        now = time.monotonic()
        while buffer and len(out) < limit:
            message = buffer.popleft()
            receipt: NATSReceipt = message.metadata
            if _fresh(receipt.lease, receipt.leased_until - receipt.lease, now):
                out.append(message)
        return out

    def _lease_start(self) -> float:
        """When the lease of a message read now began, at the earliest (see read_in_calls_only)."""
        return time.monotonic() if self._horizon is None else self._horizon

    async def _accept(
        self, settings: QueueSettings, pulled: Sequence[Msg], starts: Sequence[float]
    ) -> list[Message]:
        """The messages to hand out, each leased from its start in ``starts``: those
        delivered too often go to the dead-letter queue, those a subscription filter does
        not want are acknowledged and dropped, those with less than half their lease left
        are left to come back, and first deliveries the server repeats are dropped (see
        ``_firsts``)."""
        out: list[Message] = []
        now = time.monotonic()
        lease = settings.visibility_timeout
        queue = settings.queue
        firsts = self._firsts
        for msg, start in zip(pulled, starts, strict=True):
            meta = msg.metadata
            delivered = meta.num_delivered
            sequence = meta.sequence.stream
            if delivered == 1:
                last = firsts.get(queue)
                if last is not None and sequence <= last[0] and meta.timestamp <= last[1]:
                    logger.debug(
                        "NATS delivered message %d of %s again as a first delivery: left to "
                        "its holder (it comes back when its lease ends)",
                        sequence,
                        queue,
                    )
                    continue
                firsts[queue] = (sequence, meta.timestamp)
            start = min(start, now)
            receipt = NATSReceipt(queue, msg.reply, sequence, delivered, lease, start + lease)
            from_topic = msg.subject.startswith(f"{self.names.prefix}.t.")
            if (
                from_topic
                and settings.filters
                and not settings.wants(msg.subject, manifest_of(msg.headers), self.names)
            ):
                await self._settle(receipt, b"+ACK")
                continue
            message = decode_message(msg.data, msg.headers, delivered, receipt)
            if settings.dead_letter_queue is not None and delivered > settings.max_receive_count:
                headers = backstop_headers(settings.queue, delivered - 1)
                await self._move_to_dead_letter_queue(message, settings, headers)
                continue
            if _fresh(lease, start, now):
                out.append(message)
        return out

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def interrupt(self) -> None:
        """Wake a :meth:`retrieve_messages` waiting for messages (from any thread)."""
        with self._interrupt_lock:
            self._interrupts += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(self._notify)

    # -- settling ---------------------------------------------------------------------------

    async def _settle(self, receipt: NATSReceipt, verb: bytes) -> None:
        """Send an acknowledgement verb; the server ignores one for a message already settled
        or delivered again, and an unsent one leaves the message to come back."""
        final = verb != b"+WPI"
        if final:
            receipt.settled = True
            renewal, receipt.renewal = receipt.renewal, None
            if renewal is not None:
                # Settled through another instance (a thread's own connection) maybe: the
                # renewal task belongs to its loop.
                with contextlib.suppress(RuntimeError):  # its loop closed: it ended too
                    renewal.get_loop().call_soon_threadsafe(renewal.cancel)
        try:
            nc = await self._client()
            await nc.publish(receipt.reply, verb)
            self._unconfirmed = True
        except _SEND_ERRORS as exc:
            logger.debug("NATS acknowledgement not sent (%s); redelivered later", explain(exc))

    async def acknowledge(self, message: Message) -> None:
        await self._settle(_receipt(message), b"+ACK")

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await self._settle(_receipt(message), b"+ACK")

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        """Give ``message`` back: delivered again after ``delay`` seconds (``-NAK``)."""
        receipt = _receipt(message)
        if delay > 0:
            verb = b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
        else:
            verb = b"-NAK"
        await self._settle(receipt, verb)

    async def flushed(self) -> None:
        """Return once the client handed what it queued (acknowledgements) to the socket:
        its writer task runs at the next turn of the loop; no round trip to the server."""
        nc = self._nc
        for _ in range(_FLUSH_TURNS):
            if nc is None or not nc.is_connected or nc.pending_data_size == 0:
                return
            await asyncio.sleep(0)

    def holds(self, message: Message) -> bool:
        """``False`` once the lease of ``message`` ran out (another receiver may have it)."""
        receipt = message.metadata
        return (
            isinstance(receipt, NATSReceipt)
            and not receipt.settled
            and time.monotonic() < receipt.leased_until
        )

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        return receipt.lease if isinstance(receipt, NATSReceipt) else self.visibility_timeout

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """Renew the lease (``+WPI``): the server's ``ack_wait`` starts again. A renewal
        longer than the lease is kept up by renewing every third of the lease until then."""
        receipt = _receipt(message)
        if receipt.settled:
            return
        await self._settle(receipt, b"+WPI")
        now = time.monotonic()
        receipt.leased_until = now + max(receipt.lease, seconds)
        if seconds > receipt.lease and receipt.renewal is None:
            receipt.renewal = asyncio.get_running_loop().create_task(self._keep_leased(receipt))

    async def _keep_leased(self, receipt: NATSReceipt) -> None:
        try:
            while not receipt.settled:
                await asyncio.sleep(receipt.lease / 3)
                now = time.monotonic()
                if receipt.settled or now >= receipt.leased_until - receipt.lease / 3:
                    return
                await self._settle(receipt, b"+WPI")
        finally:
            receipt.renewal = None

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Publish a copy with ``headers`` to the queue's dead-letter queue, then acknowledge.

        Returns ``False``, leaving the message unsettled, when the queue has none.
        """
        receipt = _receipt(message)
        settings = await self._queue_settings(receipt.queue)
        if settings.dead_letter_queue is None:
            return False
        await self._move_to_dead_letter_queue(message, settings, headers)
        return True

    async def _move_to_dead_letter_queue(
        self, message: Message, settings: QueueSettings, headers: Mapping[str, str]
    ) -> None:
        dlq = str(settings.dead_letter_queue)
        await self._publish(self.names.queue_subject(dlq), [message], dlq, None, False, headers)
        await self._settle(_receipt(message), b"+ACK")

    # -- inspection -------------------------------------------------------------------------

    async def queue_names(self) -> list[str]:
        """Every queue of this prefix."""
        streams = await self._stream_names(f"{self.names.prefix}_q_")
        return sorted(str(self.names.queue_of_stream(s)) for s in streams)

    async def topic_names(self) -> list[str]:
        """Every topic of this prefix."""
        streams = await self._stream_names(f"{self.names.prefix}_t_")
        return sorted(str(self.names.topic_of_stream(s)) for s in streams)

    async def queue_stats(self, queue_name: str) -> QueueStats:
        """Messages of the queue: ready, in flight (handed out, unsettled or waiting out a
        retry delay: JetStream does not tell those apart) and in total."""
        stream = self.names.queue_stream(queue_name)

        async def op(_nc: Client) -> QueueStats:
            try:
                info = await self._js.stream_info(stream)
                consumer = await self._js.consumer_info(stream, CONSUMER)
            except nats.js.errors.NotFoundError:
                raise QueueNotFoundError(queue_name) from None
            total = int(info.state.messages)
            in_flight = min(total, int(consumer.num_ack_pending or 0))
            return QueueStats(ready=total - in_flight, in_flight=in_flight, total=total)

        return await self._run(op)

    async def queue_depth(self, queue_name: str) -> int:
        """Messages the queue holds, in flight or not."""
        return (await self.queue_stats(queue_name)).total

    async def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue, oldest first, without receiving them."""
        stream = self.names.queue_stream(queue_name)
        info = await self._stream_info(stream)
        if info is None:
            raise QueueNotFoundError(queue_name)

        async def op(nc: Client) -> list[Message]:
            out: list[Message] = []
            seq = int(info.state.first_seq)
            while len(out) < limit and seq <= int(info.state.last_seq):
                try:
                    answer = await self._api(
                        nc, f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": ">"}
                    )
                except nats.js.errors.NotFoundError:
                    break
                raw = api.RawStreamMsg.from_response(answer["message"])
                out.append(_stored_message(raw))
                seq = int(raw.seq or seq) + 1
            return out

        return await self._run(op)

    async def purge(self, queue_name: str) -> int:
        """Delete every message of the queue; returns how many."""
        stream = self.names.queue_stream(queue_name)

        async def op(nc: Client) -> int:
            try:
                answer = await self._api(nc, f"STREAM.PURGE.{stream}", {})
            except nats.js.errors.NotFoundError:
                raise QueueNotFoundError(queue_name) from None
            return int(answer.get("purged", 0))

        return await self._run(op)

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send what is buffered (acknowledgements included) and close the connection.
        Unsettled messages come back when their leases end."""
        self._closed = True
        self.interrupt()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            # Messages that came after their receive returned go back at once, not after
            # their lease (the delivery counts, as a release does). A pull request still open
            # may be answering meanwhile: what the server sent before a ping's answer has
            # arrived once the answer has, so give back, confirm, and look again.
            for _ in range(_CLOSE_ROUNDS):
                leftovers = [m for buffer in self._leftovers.values() for m in buffer]
                self._leftovers.clear()
                for message in leftovers:
                    await self._settle(_receipt(message), b"-NAK")
                if not await self._confirm_sent(nc):
                    break
                await self._answers_handled()
                if not self._leftovers:
                    break
        self._nc = None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)

    async def _answers_handled(self) -> None:
        """Let the callbacks of the pull requests' answers that arrived run (bounded)."""
        answers = self._answers
        deadline = time.monotonic() + _CLOSE_FLUSH_TIMEOUT / 10
        while answers is not None and answers.pending_msgs and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        for _ in range(_FLUSH_TURNS):  # the last callback's own turns
            await asyncio.sleep(0)

    async def _confirm_sent(self, nc: Client) -> bool:
        """Wait for the server to confirm what was sent (a ping's answer, which comes after
        what was sent before it, and after what the server sent before it), while the
        connection lasts; whether it did.

        Only acknowledgements and pull requests need it: every publish and request already
        waited for its answer. Over a lost connection there is nothing to wait for (what it
        holds is dropped with it, and those messages come back when their leases end), and
        nats-py forgets the ping when it reconnects, so the wait ends once the client sees
        the connection go.
        """
        if not self._unconfirmed or not nc.is_connected:
            return False
        self._unconfirmed = False
        flush = asyncio.ensure_future(nc.flush(timeout=int(_CLOSE_FLUSH_TIMEOUT)))
        deadline = time.monotonic() + _CLOSE_FLUSH_TIMEOUT
        try:
            while not flush.done() and nc.is_connected and time.monotonic() < deadline:
                await asyncio.wait((flush,), timeout=_CLOSE_FLUSH_LOOK)
        finally:
            if not flush.done():
                flush.cancel()
                logger.debug("closing without the confirmation of NATS at %s", self.describe)
        if not flush.done() or flush.cancelled():
            return False  # (a cancelled task is done only once it ran its cancellation)
        if (error := flush.exception()) is not None:
            logger.debug("flushing before the close failed: %s", explain(error))
            return False
        return True


@dataclass(frozen=True)
class QueueStats:
    """A queue's message counts (``delayed`` is not known apart from ``in_flight``)."""

    ready: int
    in_flight: int
    total: int
    delayed: int | None = None


def _fresh(lease: float, since: float, now: float) -> bool:
    """Whether a message leased for ``lease`` seconds from ``since`` may be handed out at
    ``now``: half its lease left at least, or it may reach another receiver meanwhile."""
    return since + lease - now > lease / 2


#: The reason :meth:`AsyncNATSBackend._publish_one` gives when no stream takes the subject.
_NO_STREAM = "no stream"
#: The status of the server's answer to a request nobody subscribes to.
_NO_RESPONDERS = "503"


async def _linger(pull: _Pull, pause: float, asleep: bool) -> None:
    """Wait while messages keep coming for ``pull``: until it is full or over, or ``pause``
    seconds pass without a message.

    ``asleep``: the loop is the calling thread's own (see ``read_in_calls_only``), so the
    thread sleeps through each pause, leaving what comes in the socket, and then lets the
    loop read it all at once.
    """
    seen = -1
    while not pull.done.done() and len(pull.messages) != seen:
        seen = len(pull.messages)
        if asleep:
            time.sleep(pause)
            await asyncio.wait((pull.done,), timeout=_READ_PAUSE)
        else:
            await asyncio.wait((pull.done,), timeout=pause)


async def _collect(pull: _Pull, budget: float) -> None:
    """Wait for an immediate pull request to end. The server ends it with a status when it
    has fewer messages than asked; when the consumer's ``max_ack_pending`` stops it midway,
    it keeps the request open instead, so a pause after the first messages ends it too."""
    deadline = time.monotonic() + budget
    seen = -1
    while not pull.done.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if pull.messages and len(pull.messages) == seen:
            return  # what comes later becomes a leftover
        seen = len(pull.messages)
        pause = remaining if not pull.messages else min(remaining, 0.05)
        await asyncio.wait((pull.done,), timeout=pause)


def _stored_message(raw: Any) -> Message:
    """A message read from a stream without receiving it (no receipt, no attempt)."""
    headers: dict[str, str] = {}
    if raw.hdrs:
        block = base64.b64decode(raw.hdrs).decode("utf-8", "replace")
        for line in block.split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip()] = value.strip()
    payload = base64.b64decode(raw.data) if raw.data else b""
    return decode_message(payload, headers, None, None)


def _receipt(message: Message) -> NATSReceipt:
    receipt = message.metadata
    if not isinstance(receipt, NATSReceipt):
        raise ValueError(f"{message!r} was not received from a NATS backend")
    return receipt


__all__ = ["AsyncNATSBackend", "NATSReceipt", "QueueStats", "nats_capabilities"]
