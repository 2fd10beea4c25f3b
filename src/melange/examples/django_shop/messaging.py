"""The shop's messaging, configured from Django's settings.

Settings read:

- ``MELANGE_BACKEND_URL``: the broker (a backend URL such as
  ``amqp://user:password@rabbitmq:5672/%2F``; default: ``sqlite:///melange.db``).
- ``SHOP_ORDERS_QUEUE``: the queue orders go through (default ``shop-orders``).

Order statuses are kept in Django's cache: the view writes ``received``, the consumer
``confirmed``. The view and the command run in different processes in production, so the
cache must be one they share (Redis, Memcached, the database cache).
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.cache import cache

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import backend_from_url, default_backend_url
from melange.consumers import Consumer
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from melange.service import Service

_lock = threading.Lock()
# The publishing backend of each URL, opened on first use and shared by the process's
# request threads (a broker connection per request would cost a round trip or more each).
_publishing: dict[str, MessagingBackend] = {}


def backend_url() -> str:
    """The broker's URL from the settings."""
    url: str = getattr(settings, "MELANGE_BACKEND_URL", "") or default_backend_url()
    return url


def orders_queue() -> str:
    """The orders queue's name from the settings."""
    name: str = getattr(settings, "SHOP_ORDERS_QUEUE", "shop-orders")
    return name


def open_backend() -> MessagingBackend:
    """A new backend on the configured broker (the consumer opens one per queue)."""
    return backend_from_url(backend_url())


def declare_queues(backend: MessagingBackend) -> None:
    """Create the orders queue and its dead-letter queue, if they do not exist."""
    queue = orders_queue()
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=f"{queue}-dlq")


def publisher() -> QueuePublisher:
    """A publisher on the process's shared publishing backend."""
    url = backend_url()
    with _lock:
        backend = _publishing.get(url)
        if backend is None:
            backend = backend_from_url(url)
            # Publishing to a queue that does not exist fails: declare it (idempotent) once.
            declare_queues(backend)
            _publishing[url] = backend
    return QueuePublisher(JsonSerializer(), backend)


def close_publishing_backends() -> None:
    """Close the publishing backends (at shutdown, or between tests)."""
    with _lock:
        backends = list(_publishing.values())
        _publishing.clear()
    for backend in backends:
        backend.close_connection()


def status_key(order_id: int) -> str:
    """The cache key of an order's status."""
    return f"melange-shop:order:{order_id}"


def confirm_order(order: dict[str, Any]) -> None:
    """The consumer: record the order as confirmed (a real shop would charge, reserve...)."""
    cache.set(status_key(order["order_id"]), "confirmed", timeout=None)


def build_service() -> Service:
    """The consuming side: the orders queue and its consumer."""
    service = Service("shop")
    service.consume(orders_queue(), Consumer(confirm_order, name="shop.confirm-order"))
    return service
