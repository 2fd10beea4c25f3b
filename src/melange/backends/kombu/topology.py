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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from melange.backends.amqp import refuse_fifo_publish as refuse_fifo_publish_on
from melange.backends.amqp import refuse_fifo_queue
from melange.backends.interfaces import BackendCapabilities
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


__all__ = [
    "AMQP_DRIVERS",
    "DEAD_LETTER_EXCHANGE",
    "EVERY_MESSAGE",
    "QUEUE_REGISTRY",
    "TOPIC_REGISTRY",
    "capabilities",
    "check_name",
    "check_queue_options",
    "refuse_fifo_publish",
    "routing_key",
]
