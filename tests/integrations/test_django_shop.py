"""The Django example (melange.examples.django_shop): a view publishes orders, the
``consume_orders`` management command consumes them until SIGTERM.

Django is configured once for the test process with the few settings the app needs; each
test points ``MELANGE_BACKEND_URL`` and the queue at its own broker and queue.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client, override_settings
from integrations_support import RABBITMQ_URL

from melange.backends import SQLiteBackend
from melange.examples.django_shop.messaging import close_publishing_backends

if not settings.configured:
    settings.configure(
        SECRET_KEY="only-for-these-tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=["melange.examples.django_shop"],
        ROOT_URLCONF="melange.examples.django_shop.urls",
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        MIDDLEWARE=[],
        USE_TZ=True,
    )
    django.setup()


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    cache.clear()
    yield
    close_publishing_backends()
    cache.clear()


def status(client: Client, order_id: int) -> str | None:
    response = client.get(f"/orders/{order_id}/")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.content
    value: str = response.json()["status"]
    return value


def consume_until_confirmed(client: Client, order_ids: list[int], **options: object) -> str:
    """Run ``manage.py consume_orders`` in this (main) thread, as a deployment does; once
    every order is confirmed, send the process SIGTERM, as a supervisor does. Its output."""
    confirmed = threading.Event()
    default_handler = signal.getsignal(signal.SIGTERM)

    def stop_when_done() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(status(client, n) == "confirmed" for n in order_ids):
                confirmed.set()
                break
            time.sleep(0.05)
        # Only to the handler the command installed: the one before it may end the process.
        if signal.getsignal(signal.SIGTERM) is not default_handler:
            os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_done, daemon=True)
    out = io.StringIO()
    stopper.start()
    call_command("consume_orders", stdout=out, **options)
    stopper.join(timeout=10)
    assert confirmed.is_set(), f"the orders were not all confirmed; output:\n{out.getvalue()}"
    return out.getvalue()


def place(client: Client, order_id: int, amount: float) -> str:
    response = client.post(
        "/orders/", {"order_id": order_id, "amount": amount}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    message_id: str = response.json()["message_id"]
    return message_id


def test_orders_placed_in_a_view_are_confirmed_by_the_management_command_on_sqlite(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    with override_settings(MELANGE_BACKEND_URL=url, SHOP_ORDERS_QUEUE="shop-orders"):
        client = Client()
        place(client, 1, 25.0)
        place(client, 2, 40.0)
        # Published, not yet consumed: the command is not running.
        assert status(client, 1) == status(client, 2) == "received"

        output = consume_until_confirmed(client, [1, 2])

    assert "consuming shop-orders" in output
    assert "stopped shop-orders: received 2, acknowledged 2, dead lettered 0" in output
    backend = SQLiteBackend(str(tmp_path / "shop.db"))
    try:
        assert backend.queue_stats("shop-orders").total == 0
    finally:
        backend.close_connection()


def test_a_malformed_order_is_refused_and_not_published(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    with override_settings(MELANGE_BACKEND_URL=url):
        client = Client()
        place(client, 7, 10.0)
        response = client.post("/orders/", {"order_id": "seven"}, content_type="application/json")
        assert response.status_code == 400
        assert client.get("/orders/7/").status_code == 200
        assert client.get("/orders/8/").status_code == 404
        assert client.get("/orders/").status_code == 405  # POST only
    backend = SQLiteBackend(str(tmp_path / "shop.db"))
    try:
        assert backend.queue_stats("shop-orders").ready == 1
    finally:
        backend.close_connection()


def test_on_rabbitmq_with_several_workers(
    unique: str, rabbitmq_queues: Callable[..., None]
) -> None:
    queue = f"shop-orders-{unique}"
    rabbitmq_queues(queue, f"{queue}-dlq")
    with override_settings(MELANGE_BACKEND_URL=RABBITMQ_URL, SHOP_ORDERS_QUEUE=queue):
        client = Client()
        for order_id in range(1, 6):
            place(client, order_id, 10.0 * order_id)

        output = consume_until_confirmed(client, list(range(1, 6)), workers=2)

    assert f"stopped {queue}: received 5, acknowledged 5, dead lettered 0" in output
