"""Looking into RabbitMQ queues from outside their consumers (``melange queues``,
``melange dlq``): the :class:`~melange.backends.inspection.Inspectable` contract on RabbitMQ.

AMQP can count a queue's ready messages (a passive ``queue.declare``), purge a queue and read
messages without settling them (``basic.get``, then the channel closes and they go back), but
it cannot list queues, exchanges or bindings. Those need RabbitMQ's management HTTP API
(``rabbitmq-plugins enable rabbitmq_management``), used when it answers:

- **Always**: a queue's ready messages and the messages waiting in its retry queues (delayed)
  are counted by passive declarations, exact at once.
- **With the management API**: every queue and topic is listed; in flight is the queue's
  ``messages_unacknowledged``, as of the API's last statistics sample (every 5 s by default);
  a dead-letter queue's sources are the routing keys of its bindings to ``melange.dlx``.
- **Without it**: in flight is not known; listing queues, topics and dead-letter sources
  raises :class:`~melange.backends.inspection.InspectionUnavailable` naming the plugin.

The API is looked for at ``http://<AMQP host>:15672`` (``https://...:15671`` for ``amqps``)
with the AMQP credentials, or at the URL in ``MELANGE_RABBITMQ_MANAGEMENT_URL``. Credentials
travel in the ``Authorization`` header, never in a URL or an error message.

A peek is a delivery: on a quorum queue with a delivery limit, each peek counts towards it.
Dead-letter queues have none, so ``melange dlq show`` is safe.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from melange.backends.inspection import InspectionUnavailable, QueueStats
from melange.backends.names import check_amqp_name
from melange.backends.rabbitmq.topology import (
    DEAD_LETTER_EXCHANGE,
    DELAY_LADDER_MS,
    NOT_FOUND,
    retry_queue_name,
)
from melange.backends.rabbitmq.wire import from_delivery
from melange.exceptions import BackendError, QueueNotFoundError
from melange.models import Message

#: Overrides where the management API is looked for (``http://host:port``).
MANAGEMENT_URL_ENV = "MELANGE_RABBITMQ_MANAGEMENT_URL"

#: Parts of the names of the queues Melange keeps for itself (retries, delayed publishes).
INTERNAL_QUEUE_MARKERS = (".melange-retry-", ".melange-delay-", ".melange-topic-delay-")

_PLUGIN_HINT = "rabbitmq-plugins enable rabbitmq_management"

#: Seconds the management API's queue listing is reused (its figures are sampled anyway).
LISTING_SECONDS = 2.0


def is_internal_queue(name: str) -> bool:
    """Whether ``name`` is one of the queues Melange keeps for itself, or the broker's own."""
    return name.startswith("amq.") or any(marker in name for marker in INTERNAL_QUEUE_MARKERS)


def retry_queue_of(name: str) -> str | None:
    """The queue a retry queue gives its messages back to (``None``: not a retry queue)."""
    for marker in (".melange-retry-", ".melange-delay-"):
        base, found, _ = name.rpartition(marker)
        if found:
            return base
    return None


class ManagementAPI:
    """A small client of RabbitMQ's management HTTP API, for one virtual host.

    Args:
        base_url: ``http://host:15672`` (no credentials in it).
        username: The user name.
        password: The password (sent in the ``Authorization`` header only).
        vhost: The virtual host whose queues and exchanges are read.
        timeout: Seconds each request may take.
    """

    def __init__(
        self, base_url: str, username: str, password: str, vhost: str, timeout: float = 5.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.vhost = vhost
        self.timeout = timeout
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    def __repr__(self) -> str:
        return f"ManagementAPI({self.base_url}, vhost {self.vhost!r})"

    def _path(self, *parts: str) -> str:
        return "/api/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)

    def get(self, path: str) -> Any:
        """The decoded JSON answer to ``GET path``.

        Raises:
            LookupError: HTTP 404 (the caller names what is missing).
            InspectionUnavailable: the API cannot be reached or refuses the credentials.
        """
        request = urllib.request.Request(
            self.base_url + path,
            headers={"Authorization": self._authorization, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read().decode())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise LookupError(path) from None
            if exc.code in (401, 403):
                raise InspectionUnavailable(
                    f"RabbitMQ's management API at {self.base_url} refused the AMQP user "
                    f"(HTTP {exc.code}): it needs the management or monitoring tag"
                ) from None
            raise BackendError(
                f"RabbitMQ's management API at {self.base_url} answered HTTP {exc.code}"
            ) from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InspectionUnavailable(
                f"RabbitMQ's management API is not reachable at {self.base_url} ({reason}); "
                f"enable it with `{_PLUGIN_HINT}` or set {MANAGEMENT_URL_ENV}"
            ) from None

    def available(self) -> bool:
        """Whether the API answers with these credentials."""
        try:
            self.get("/api/overview")
        except (InspectionUnavailable, BackendError, LookupError):
            return False
        return True

    def queues(self) -> list[dict[str, Any]]:
        """The queues of the virtual host: name and message counts."""
        path = self._path("queues", self.vhost)
        found: list[dict[str, Any]] = self.get(
            f"{path}?columns=name,messages,messages_ready,messages_unacknowledged"
        )
        return found

    def exchanges(self) -> list[dict[str, Any]]:
        """The exchanges of the virtual host."""
        found: list[dict[str, Any]] = self.get(self._path("exchanges", self.vhost))
        return found

    def queue_bindings(self, queue: str) -> list[dict[str, Any]]:
        """The bindings of ``queue``."""
        try:
            found: list[dict[str, Any]] = self.get(
                self._path("queues", self.vhost, queue, "bindings")
            )
        except LookupError:
            raise QueueNotFoundError(queue) from None
        return found


def management_for(params: pika.ConnectionParameters) -> ManagementAPI:
    """The management API of the broker ``params`` connect to, with the same credentials."""
    base = os.environ.get(MANAGEMENT_URL_ENV)
    if not base:
        secure = params.ssl_options is not None
        host = params.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        base = f"{'https' if secure else 'http'}://{host}:{15671 if secure else 15672}"
    credentials = params.credentials
    username = str(getattr(credentials, "username", "guest"))
    password = str(getattr(credentials, "password", "guest"))
    return ManagementAPI(base, username, password, params.virtual_host)


def declared_count(channel: Any, name: str) -> int | None:
    """Ready messages of the queue by a passive declaration (``None``: no such queue).

    A missing queue closes ``channel``: the caller's next operation opens another.
    """
    check_amqp_name("queue", name)
    try:
        frame = channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return None
        raise
    return int(frame.method.message_count)


class RabbitMQInspection:
    """The inspection methods of :class:`~melange.backends.rabbitmq.backend.RabbitMQBackend`
    (a mixin; see :mod:`melange.backends.rabbitmq.inspect`)."""

    _params: pika.ConnectionParameters
    _call: Callable[..., Any]
    _management: ManagementAPI | None = None
    _management_checked: bool = False
    # The API's queue listing and when it was read: listing N queues with their counts
    # reads it once, not N times.
    _listing: tuple[float, dict[str, dict[str, Any]]] | None = None

    def management_api(self) -> ManagementAPI | None:
        """The management API when it answers (checked once), else ``None``."""
        if not self._management_checked:
            api = management_for(self._params)
            self._management = api if api.available() else None
            self._management_checked = True
        return self._management

    def _need_api(self, what: str) -> ManagementAPI:
        api = self.management_api()
        if api is None:
            where = management_for(self._params).base_url
            raise InspectionUnavailable(
                f"{what} on RabbitMQ needs its management plugin, which does not answer at "
                f"{where} (`{_PLUGIN_HINT}` on the broker, or set {MANAGEMENT_URL_ENV}); "
                "without it, name the queue: `melange queues stats QUEUE`, `melange queues "
                "purge QUEUE`, `melange dlq show QUEUE` and `melange dlq redrive QUEUE` work"
            )
        return api

    def _listed_queues(self, api: ManagementAPI) -> dict[str, dict[str, Any]]:
        """The API's queues by name, read at most once every ``LISTING_SECONDS``."""
        now = time.monotonic()
        if self._listing is None or now - self._listing[0] > LISTING_SECONDS:
            self._listing = (now, {q["name"]: q for q in api.queues()})
        return self._listing[1]

    def queue_names(self) -> list[str]:
        """Every queue's name, sorted, retry queues left out (needs the management API)."""
        api = self._need_api("listing the queues")
        return sorted(name for name in self._listed_queues(api) if not is_internal_queue(name))

    def topic_names(self) -> list[str]:
        """Every topic's name, sorted (needs the management API)."""
        api = self._need_api("listing the topics")
        return sorted(
            e["name"]
            for e in api.exchanges()
            if e.get("type") == "headers"
            and e["name"]
            and not e["name"].startswith("amq.")
            and e["name"] != DEAD_LETTER_EXCHANGE
        )

    def queue_stats(self, queue_name: str) -> QueueStats:
        """Ready, in-flight and delayed (waiting in a retry queue) messages of the queue.

        Ready and delayed messages are counted by passive declarations, exact at once. In
        flight comes from the management API, whose figures are sampled (every 5 s by
        default); without the API it is not known (``None``).
        """
        api = self.management_api()
        in_flight: int | None = None
        if api is not None:
            listed = self._listed_queues(api)
            retries = [name for name in listed if retry_queue_of(name) == queue_name]
            in_flight = int(listed.get(queue_name, {}).get("messages_unacknowledged") or 0)
        else:
            retries = [retry_queue_name(queue_name, step) for step in DELAY_LADDER_MS]

        def count(session: Any) -> tuple[int | None, int]:
            ready = declared_count(session.topology(), queue_name)
            if ready is None:
                return None, 0
            waiting = sum(declared_count(session.topology(), name) or 0 for name in retries)
            return ready, waiting

        ready, delayed = self._call(count)
        if ready is None:
            raise QueueNotFoundError(queue_name)
        return QueueStats(queue_name, ready, in_flight, delayed)

    def queue_depth(self, queue_name: str) -> int:
        """Messages of the queue that can be counted (see :meth:`queue_stats`)."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Copies of up to ``limit`` ready messages, oldest first: read with ``basic.get``
        on a channel of their own, which then closes so that they go back to the queue."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        check_amqp_name("queue", queue_name)

        def read(session: Any) -> list[Message] | None:
            channel = session.connection.channel()
            copies: list[Message] = []
            try:
                while len(copies) < limit:
                    method, properties, body = channel.basic_get(queue_name, auto_ack=False)
                    if method is None:
                        break
                    copies.append(from_delivery(properties, body, None))
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == NOT_FOUND:
                    return None
                raise
            finally:
                if channel.is_open:
                    # Unsettled, they go back to the queue where they were.
                    channel.close()
            return copies

        found: list[Message] | None = self._call(read)
        if found is None:
            raise QueueNotFoundError(queue_name)
        return found

    def purge(self, queue_name: str) -> int:
        """Delete the ready messages of the queue and those waiting in its retry queues;
        returns how many. Messages a consumer holds are not deleted (AMQP cannot)."""
        check_amqp_name("queue", queue_name)

        def purge(session: Any) -> int | None:
            if declared_count(session.topology(), queue_name) is None:
                return None
            deleted = int(session.topology().queue_purge(queue_name).method.message_count)
            for step in DELAY_LADDER_MS:
                retry = retry_queue_name(queue_name, step)
                if declared_count(session.topology(), retry):
                    deleted += int(session.topology().queue_purge(retry).method.message_count)
            return deleted

        deleted: int | None = self._call(purge)
        if deleted is None:
            raise QueueNotFoundError(queue_name)
        return deleted

    def dead_letter_sources(self, queue_name: str) -> list[str]:
        """The queues whose dead letters reach ``queue_name`` through ``melange.dlx``
        (needs the management API)."""
        api = self._need_api("finding the queues that dead-letter into a queue")
        return sorted(
            {
                b["routing_key"]
                for b in api.queue_bindings(queue_name)
                if b.get("source") == DEAD_LETTER_EXCHANGE and b.get("routing_key")
            }
        )


__all__ = [
    "INTERNAL_QUEUE_MARKERS",
    "MANAGEMENT_URL_ENV",
    "ManagementAPI",
    "RabbitMQInspection",
    "declared_count",
    "is_internal_queue",
    "management_for",
    "retry_queue_of",
]
