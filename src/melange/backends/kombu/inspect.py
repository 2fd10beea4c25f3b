"""Looking into the queues of :class:`~melange.backends.kombu.KombuBackend` from outside
their consumers (``melange queues``, ``melange dlq``).

The backend implements :class:`~melange.backends.inspection.Inspectable`,
:class:`~melange.backends.inspection.ListsTopics` and
:class:`~melange.backends.inspection.KnowsDeadLetterSources` itself:

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

import os
from typing import Any

from melange.backends.inspection import InspectionUnavailable, QueueStats

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


__all__ = ["MANAGEMENT_URL_ENV", "QueueStats", "management_api"]
