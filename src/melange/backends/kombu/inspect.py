"""Looking into the queues of :class:`~melange.backends.kombu.KombuBackend` from outside
their consumers (``melange queues``, ``melange dlq``).

The backend implements :class:`~melange.backends.inspection.Inspectable`,
:class:`~melange.backends.inspection.ListsTopics` and
:class:`~melange.backends.inspection.KnowsDeadLetterSources` with the functions here:

- **Redis transport**: queues, topics and dead-letter sources from the binding tables kombu
  keeps in Redis (``_kombu.binding.melange.queues``...), ready messages from the queue's list,
  in flight from kombu's ``unacked`` hash, peeks read the list in place.
- **AMQP transport**: ready messages by a passive declaration and peeks by receiving on a
  channel that then closes (the messages go back), as the RabbitMQ backend does; listing
  queues and topics, dead-letter sources and messages in flight need RabbitMQ's management
  API, reached with the same client as the RabbitMQ backend's (at ``http://<host>:15672``
  with the AMQP credentials, or ``MELANGE_RABBITMQ_MANAGEMENT_URL``). Without it those raise
  :class:`~melange.backends.inspection.InspectionUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from melange.backends.inspection import InspectionUnavailable, QueueStats
from melange.backends.kombu import topology
from melange.backends.kombu.connection import Link, raw_key
from melange.backends.kombu.topology import Bindings
from melange.backends.kombu.wire import from_delivery
from melange.exceptions import BackendError, QueueNotFoundError
from melange.models import Message

#: Overrides where the management API is looked for (the RabbitMQ backend's variable).
MANAGEMENT_URL_ENV = "MELANGE_RABBITMQ_MANAGEMENT_URL"


def management_api(connection: Any, what: str) -> Any:
    """RabbitMQ's management API for the broker of a kombu AMQP ``connection``.

    Raises:
        InspectionUnavailable: the API does not answer (or its client is not installed).
    """
    try:
        from melange.backends.rabbitmq.inspect import ManagementAPI
    except ImportError as exc:
        raise InspectionUnavailable(
            f"{what} on AMQP needs RabbitMQ's management API, whose client comes with the "
            f"rabbitmq extra ({exc}): pip install 'melange[rabbitmq]'"
        ) from None
    base = os.environ.get(MANAGEMENT_URL_ENV)
    if not base:
        secure = bool(connection.ssl)
        host = str(connection.hostname or "localhost")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        base = f"{'https' if secure else 'http'}://{host}:{15671 if secure else 15672}"
    vhost = connection.virtual_host or "/"
    api = ManagementAPI(
        base, str(connection.userid or "guest"), str(connection.password or "guest"), vhost
    )
    if not api.available():
        raise InspectionUnavailable(
            f"{what} on AMQP needs RabbitMQ's management API, which does not answer at "
            f"{base} (rabbitmq-plugins enable rabbitmq_management, or set {MANAGEMENT_URL_ENV})"
        )
    return api


def queue_names(link: Link, bindings: Bindings) -> list[str]:
    """Every queue's name, sorted."""
    if link.amqp:
        api = management_api(link.connection, "listing queues")
        return sorted(q["name"] for q in api.queues() if not str(q["name"]).startswith("amq."))
    return sorted(
        {
            row[0]
            for row in link.on_spare(
                lambda channel: bindings.table(channel, topology.QUEUE_REGISTRY), "listing queues"
            )
        }
    )


def topic_names(link: Link, bindings: Bindings) -> list[str]:
    """Every topic's name, sorted."""
    if link.amqp:
        api = management_api(link.connection, "listing topics")
        return sorted(
            e["name"]
            for e in api.exchanges()
            if e.get("type") == "topic"
            and not str(e["name"]).startswith(("amq.", "melange."))
            and e["name"]
        )
    return sorted(
        {
            row[0]
            for row in link.on_spare(
                lambda channel: bindings.table(channel, topology.TOPIC_REGISTRY), "listing topics"
            )
        }
    )


def dead_letter_sources(link: Link, bindings: Bindings, queue_name: str) -> list[str]:
    """The queues whose dead letters go to ``queue_name``, sorted."""
    if link.amqp:
        api = management_api(link.connection, "finding dead-letter sources")
        return sorted(
            {
                b["routing_key"]
                for b in api.queue_bindings(queue_name)
                if b.get("source") == topology.DEAD_LETTER_EXCHANGE and b.get("routing_key")
            }
        )
    rows = link.on_spare(
        lambda channel: bindings.table(channel, topology.DEAD_LETTER_EXCHANGE),
        "finding dead-letter sources",
    )
    return sorted({key for key, _, bound in rows if bound == queue_name})


def queue_stats(link: Link, bindings: Bindings, queue_name: str, leasing: bool) -> QueueStats:
    """Ready and in-flight messages of the queue (in flight: on Redis, kombu's ``unacked``
    entries of the queue, when the transport ``leasing``; on AMQP, from the management API
    when it answers, else unknown)."""

    def count(channel: Any) -> tuple[int | None, int | None]:
        if link.amqp:
            return bindings.declared_count(channel, queue_name), None
        ready = int(channel._size(queue_name))
        if not leasing:
            return ready, None
        in_flight = 0
        for raw in channel.client.hvals(raw_key(channel, channel.unacked_key)):
            with contextlib.suppress(ValueError, TypeError):
                _, exchange, key = json.loads(raw)
                if not exchange and key == queue_name:
                    in_flight += 1
        return ready, in_flight

    ready, in_flight = link.on_spare(count, f"counting queue {queue_name!r}")
    if ready is None:
        raise QueueNotFoundError(queue_name)
    if link.amqp:
        with contextlib.suppress(InspectionUnavailable, BackendError, LookupError, ImportError):
            api = management_api(link.connection, "counting messages in flight")
            for q in api.queues():
                if q["name"] == queue_name:
                    in_flight = int(q.get("messages_unacknowledged") or 0)
    return QueueStats(queue_name, ready, in_flight, None)


def peek(link: Link, queue_name: str, limit: int) -> list[Message]:
    """Copies of up to ``limit`` messages, oldest first, without settling them (see
    :meth:`~melange.backends.kombu.KombuBackend.peek`)."""

    def look(channel: Any) -> list[Message]:
        if link.amqp:
            copies = []
            for _ in range(limit):
                delivered = channel.basic_get(queue_name, no_ack=False)
                if delivered is None:
                    break
                copies.append(from_delivery(delivered, None))
            return copies
        if not hasattr(channel, "_q_for_pri"):
            raise InspectionUnavailable(
                f"the kombu {link.transport} transport cannot show messages in place"
            )
        key = channel._q_for_pri(queue_name, 0)
        raws = channel.client.lrange(raw_key(channel, key), -limit, -1) if limit > 0 else []
        copies = []
        for raw in reversed(raws):
            delivered = channel.Message(json.loads(raw), channel=channel)
            copies.append(from_delivery(delivered, None))
        return copies

    return link.on_spare(look, f"peeking at queue {queue_name!r}")


def purge(link: Link, queue_name: str) -> int | None:
    """Delete the ready messages of the queue; returns how many."""
    purged = link.on_spare(
        lambda channel: channel.queue_purge(queue_name), f"purging queue {queue_name!r}"
    )
    return int(purged) if purged is not None else None


__all__ = [
    "MANAGEMENT_URL_ENV",
    "QueueStats",
    "dead_letter_sources",
    "management_api",
    "peek",
    "purge",
    "queue_names",
    "queue_stats",
    "topic_names",
]
