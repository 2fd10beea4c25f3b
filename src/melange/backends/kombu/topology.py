"""Queues, topics and what a kombu transport can do (for the kombu backend).

Melange's model maps onto kombu's AMQP model, which every kombu transport speaks (natively
on AMQP, emulated by kombu's "virtual" transports such as Redis):

- **Queue**: a durable kombu queue of the same name. A publish to a queue goes through the
  default exchange with the queue's name as routing key.
- **Topic**: a durable ``topic`` exchange of the same name. A queue subscribed to it is bound
  with the routing key ``#`` (every message), or with one binding per manifest of its
  ``filter_events``; a message is published with its manifest as routing key (see
  :func:`routing_key`), so the broker does the filtering.
- **Dead-letter queue**: a plain queue, bound to the direct exchange ``melange.dlx`` with the
  source queue's name as routing key (the RabbitMQ backend's layout). The backend copies a
  dead-lettered message into it with the failure headers, then acknowledges the original.
- **Registry** (virtual transports only): an empty queue of a virtual transport leaves no
  trace (on Redis, a list without elements does not exist), so every declared queue is also
  bound to the direct exchange ``melange.queues`` and every topic to ``melange.topics``.
  Nothing is ever published to either: their bindings only say what exists.

:class:`Bindings` declares them on a channel: natively on AMQP, through kombu's binding
tables on virtual transports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from melange.backends.amqp import refuse_fifo_publish as refuse_fifo_publish_on
from melange.backends.amqp import refuse_fifo_queue
from melange.backends.interfaces import BackendCapabilities
from melange.backends.kombu.connection import NOT_FOUND, Link, reply_code
from melange.exceptions import ConfigurationError
from melange.models import Message

#: Where dead-letter queues are bound, with their source queue's name as routing key.
DEAD_LETTER_EXCHANGE = "melange.dlx"
#: Registry exchanges of virtual transports (see the module's documentation).
QUEUE_REGISTRY = "melange.queues"
TOPIC_REGISTRY = "melange.topics"
#: The binding key of a subscription without a filter: every routing key.
EVERY_MESSAGE = "#"

#: AMQP transports of kombu (the others are kombu's virtual transports).
AMQP_DRIVERS = frozenset({"amqp", "librabbitmq"})

#: Options of ``declare_queue`` the backend reads.
QUEUE_OPTIONS = frozenset({"filter_events", "max_receive_count", "visibility_timeout", "fifo"})


def routing_key(manifest: str | None) -> str:
    """The routing key a message with ``manifest`` is published with on a topic.

    ``*`` and ``#`` are wildcards in binding keys and ``%`` is the escape, so they travel
    percent-encoded: a filter on a manifest containing them matches that manifest only.
    """
    if manifest is None:
        return ""
    return manifest.replace("%", "%25").replace("*", "%2A").replace("#", "%23")


def check_name(kind: str, name: object) -> str:
    """A queue or topic name: a non-empty string of at most 200 UTF-8 bytes with no control
    characters (AMQP's short strings hold 255, and kombu's Redis keys prefix them)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name.encode("utf-8", errors="surrogatepass")) > 200:
        raise ConfigurationError(f"{kind} name {name[:40]!r}... is longer than 200 bytes")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ConfigurationError(f"{kind} name {name!r} contains a control character")
    if name.startswith("amq.") or name.startswith("melange."):
        raise ConfigurationError(
            f"{kind} name {name!r} starts with a prefix the broker or Melange reserves"
        )
    return name


def check_queue_options(queue_name: str, options: Mapping[str, Any]) -> None:
    """Refuse what a kombu transport cannot do rather than ignore it."""
    unknown = set(options) - QUEUE_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown queue option(s) {sorted(unknown)} for the kombu backend; it takes: "
            f"{', '.join(sorted(QUEUE_OPTIONS))}"
        )
    refuse_fifo_queue(queue_name, options, backend="kombu")
    timeout = options.get("visibility_timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ConfigurationError(f"visibility_timeout must be a positive number, got {timeout!r}")
    events = options.get("filter_events")
    if events is not None and (
        isinstance(events, str) or not all(isinstance(e, str) and e for e in events)
    ):
        raise ConfigurationError(
            f"filter_events must be a list of manifests (non-empty strings), got {events!r}"
        )


def refuse_fifo_publish(
    destination: str, messages: Sequence[Message], kwargs: Mapping[str, Any]
) -> None:
    """A publish asking for FIFO semantics (a group id, a deduplication id) is refused: no
    kombu transport keeps a group's order or drops duplicates."""
    refuse_fifo_publish_on(destination, messages, kwargs, backend="kombu")


def capabilities(driver: str, transport: str, persistent: bool) -> BackendCapabilities:
    """What the failure policy can do on a kombu transport (``driver``: kombu's
    ``driver_type``, ``transport``: its name in the URL).

    On every transport: delayed retries are held by the receiving process (the message stays
    unacknowledged meanwhile, so a crash gives it back at once rather than losing it), dead
    letters are copied by the backend, attempts are counted in a header. Only Redis adds a
    visibility timeout (kombu's ``unacked`` index), which the backend can extend.
    """
    redis = driver == "redis"
    amqp = driver in AMQP_DRIVERS
    return BackendCapabilities(
        name=f"kombu+{transport}",
        persistent=persistent,
        fifo=False,
        topics=amqp or redis,
        native_dead_letter=False,
        delayed_delivery=True,
        visibility_timeout=redis,
        extend_visibility=redis,
        receive_count=True,
        filter_policies=amqp or redis,
        max_message_size=None,
        max_batch_size=None,
        delayed_publish=False,
        delayed_topic_publish=False,
        max_publish_delay=None,
    )


class Bindings:
    """Queues, topics, dead-letter queues and their bindings, declared, looked up and
    deleted on a channel of a :class:`~melange.backends.kombu.connection.Link` (AMQP
    natively; virtual transports through kombu's binding tables).

    Args:
        link: The backend's connection: whether it is AMQP, its channel errors, and the
            exchanges declared on it.
    """

    def __init__(self, link: Link) -> None:
        self._link = link

    # -- bindings (AMQP natively; virtual transports through kombu's binding tables) -----------

    def declare_exchange(self, channel: Any, name: str, kind: str) -> None:
        """Declare a durable exchange, known to the link from then on."""
        channel.exchange_declare(name, kind, durable=True, auto_delete=False)
        self._link.exchanges.add(name)

    def bind(self, channel: Any, queue: str, exchange: str, kind: str, key: str) -> None:
        """Bind ``queue`` to ``exchange`` (declared first) with the binding key ``key``."""
        self.declare_exchange(channel, exchange, kind)
        if self._link.amqp or not hasattr(channel, "keyprefix_queue"):
            channel.queue_bind(queue, exchange, key)
            return
        # kombu's Redis transport skips a binding its connection made before, even when the
        # table lost it since (another process deleted it): write it every time.
        meta = channel.typeof(exchange).prepare_bind(queue, exchange, key, None)
        channel._queue_bind(exchange, *meta)

    def unbind(self, channel: Any, queue: str, exchange: str, kind: str, key: str) -> None:
        """Remove the binding of ``queue`` to ``exchange`` with ``key``."""
        if self._link.amqp:
            channel.queue_unbind(queue, exchange, key)
            return
        self.declare_exchange(channel, exchange, kind)
        meta = channel.typeof(exchange).prepare_bind(queue, exchange, key, None)
        with contextlib.suppress(KeyError):
            channel.state.binding_delete(queue, exchange, key)
        if hasattr(channel, "keyprefix_queue"):
            member = channel.sep.join([m or "" for m in meta])
            channel.client.srem(channel.keyprefix_queue % (exchange,), member)
            permanent = getattr(channel, "keyprefix_binding_permanent", None)
            if permanent:  # kombu 5.6+: the set that keeps the table from its sweeps
                channel.client.srem(permanent % (exchange,), member)
        else:
            channel.queue_unbind(queue, exchange, key)

    def table(self, channel: Any, exchange: str) -> list[tuple[str, str, str]]:
        """The bindings ``(routing key, pattern, queue)`` of an exchange (virtual only)."""
        try:
            return [tuple(row) for row in channel.get_table(exchange)]
        except KeyError:
            return []

    # -- topology -------------------------------------------------------------------------------

    def declare_topic(self, channel: Any, name: str) -> None:
        """Declare the topic's exchange (and, on virtual transports, register it)."""
        self.declare_exchange(channel, name, "topic")
        if not self._link.amqp:
            self.bind(channel, name, TOPIC_REGISTRY, "direct", name)

    def topic_exists(self, channel: Any, name: str) -> bool:
        """Whether the topic exists (on AMQP, by a passive declaration)."""
        if self._link.amqp:
            try:
                channel.exchange_declare(name, "topic", passive=True)
            except self._link.connection.channel_errors as exc:
                if reply_code(exc) == NOT_FOUND:
                    return False
                raise
            return True
        return any(row[0] == name for row in self.table(channel, TOPIC_REGISTRY))

    def queue_exists(self, channel: Any, name: str) -> bool:
        """Whether the queue exists (on AMQP, by a passive declaration)."""
        if self._link.amqp:
            return self.declared_count(channel, name) is not None
        return any(row[0] == name for row in self.table(channel, QUEUE_REGISTRY))

    def declared_count(self, channel: Any, name: str) -> int | None:
        """Ready messages of an AMQP queue by a passive declaration (``None``: missing; the
        channel is then closed)."""
        try:
            declared = channel.queue_declare(name, passive=True)
        except self._link.connection.channel_errors as exc:
            if reply_code(exc) == NOT_FOUND:
                return None
            raise
        return int(declared.message_count)

    def declare_queue(
        self,
        channel: Any,
        queue_name: str,
        dead_letter_queue_name: str | None,
        topics: Sequence[str],
        keys: Sequence[str] | None,
    ) -> None:
        """Declare the queue and its dead-letter queue, and bind the queue to each topic
        with each of ``keys`` (``None``: every message)."""
        amqp = self._link.amqp
        names = [queue_name] + ([dead_letter_queue_name] if dead_letter_queue_name else [])
        for name in names:
            channel.queue_declare(name, durable=True, auto_delete=False)
            if not amqp:
                self.bind(channel, name, QUEUE_REGISTRY, "direct", name)
        if dead_letter_queue_name:
            self.bind(channel, dead_letter_queue_name, DEAD_LETTER_EXCHANGE, "direct", queue_name)
        for topic in topics:
            self.declare_exchange(channel, topic, "topic")
            for key in keys or [EVERY_MESSAGE]:
                self.bind(channel, queue_name, topic, "topic", key)

    def delete_queue(self, channel: Any, name: str) -> None:
        """Delete the queue, with its bindings on virtual transports."""
        if self._link.amqp:
            channel.queue_delete(name)
            return
        for topic in [row[0] for row in self.table(channel, TOPIC_REGISTRY)]:
            for key, _, bound in self.table(channel, topic):
                if bound == name:
                    self.unbind(channel, name, topic, "topic", key)
        for key, _, bound in self.table(channel, DEAD_LETTER_EXCHANGE):
            if name in (key, bound):
                self.unbind(channel, bound, DEAD_LETTER_EXCHANGE, "direct", key)
        self.unbind(channel, name, QUEUE_REGISTRY, "direct", name)
        channel.queue_purge(name)

    def delete_topic(self, channel: Any, name: str) -> None:
        """Delete the topic's exchange, with its bindings on virtual transports."""
        if self._link.amqp:
            channel.exchange_delete(name)
            return
        for key, _, bound in self.table(channel, name):
            self.unbind(channel, bound, name, "topic", key)
        self.unbind(channel, name, TOPIC_REGISTRY, "direct", name)
        channel.state.exchanges.pop(name, None)


__all__ = [
    "AMQP_DRIVERS",
    "DEAD_LETTER_EXCHANGE",
    "EVERY_MESSAGE",
    "QUEUE_REGISTRY",
    "TOPIC_REGISTRY",
    "Bindings",
    "capabilities",
    "check_name",
    "check_queue_options",
    "refuse_fifo_publish",
    "routing_key",
]
