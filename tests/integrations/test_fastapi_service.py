"""The FastAPI example (melange.examples.fastapi_service) served in process: sign-ups posted
to its endpoint are published, consumed by the loop its lifespan runs, and mailed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from integrations_support import RABBITMQ_URL

from melange import InMemoryMessagingBackend, MessagingBackendFactory, QueuePublisher
from melange.backends import SQLiteBackend
from melange.backends.rabbitmq import AsyncRabbitMQBackend
from melange.dispatch.policy import FailurePolicy
from melange.examples.fastapi_service.app import OutboxMailer, create_app
from melange.models import FAILURE_EXCEPTION
from melange.serializers.json import JsonSerializer
from melange.testing.probe import wait_until


def consumer_stats(client: TestClient) -> dict[str, int]:
    response = client.get("/consumer")
    assert response.status_code == 200, response.text
    stats: dict[str, int] = response.json()
    return stats


def sign_up_three(client: TestClient) -> list[str]:
    ids = []
    for n in range(3):
        response = client.post("/signups", json={"email": f"user{n}@example.com", "name": f"U{n}"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["message_id"])
    return ids


def test_a_signup_posted_is_published_and_mailed_by_the_lifespan_consumer() -> None:
    mailer = OutboxMailer()
    app = create_app(InMemoryMessagingBackend(), mailer)
    with TestClient(app) as client:
        ids = sign_up_three(client)
        assert len(set(ids)) == 3
        wait_until(lambda: consumer_stats(client)["acknowledged"] == 3, timeout=10)
        assert sorted(mailer.sent) == [
            (f"user{n}@example.com", f"Welcome, U{n}!") for n in range(3)
        ]
    # Shutdown stopped the consume loop, which returned without an error.
    consuming = app.state.consuming
    assert consuming.done() and consuming.exception() is None


def test_a_request_that_fails_validation_publishes_nothing() -> None:
    backend = InMemoryMessagingBackend()
    app = create_app(backend)
    with TestClient(app) as client:
        response = client.post("/signups", json={"email": "no-name@example.com"})
        assert response.status_code == 422
        assert consumer_stats(client)["received"] == 0
    assert backend.retrieve_messages(backend.get_queue("welcome-emails"), wait_seconds=0) == []


def test_the_consumer_probe_is_unready_while_the_loop_does_not_run() -> None:
    app = create_app(InMemoryMessagingBackend())
    # Without its lifespan (no `with`), the application serves requests but consumes nothing.
    client = TestClient(app)
    response = client.get("/consumer")
    assert response.status_code == 503
    assert "not running" in response.json()["detail"]


def test_a_mail_that_keeps_failing_is_retried_then_dead_lettered() -> None:
    class DownMailer(OutboxMailer):
        async def send(self, to: str, subject: str) -> None:
            if to.startswith("bounce"):
                raise ConnectionError("the mail provider refused the connection")
            await super().send(to, subject)

    backend = InMemoryMessagingBackend()
    mailer = DownMailer()
    app = create_app(backend, mailer, failure_policy=FailurePolicy.no_delay(max_attempts=2))
    with TestClient(app) as client:
        client.post("/signups", json={"email": "bounce@example.com", "name": "B"})
        client.post("/signups", json={"email": "ok@example.com", "name": "O"})
        wait_until(lambda: consumer_stats(client)["dead_lettered"] == 1, timeout=10)
        stats = consumer_stats(client)
    assert mailer.sent == [("ok@example.com", "Welcome, O!")]
    assert stats["retried"] == 1
    [dead] = backend.retrieve_messages(backend.get_queue("welcome-emails-dlq"))
    assert "ConnectionError" in dead.headers[FAILURE_EXCEPTION]


def test_on_sqlite_messages_published_while_the_service_was_down_are_mailed_at_start(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "signups.db")
    # Another service published while this one was not running.
    offline = SQLiteBackend(path)
    MessagingBackendFactory(offline).init_queue(
        "welcome-emails", dead_letter_queue_name="welcome-emails-dlq"
    )
    QueuePublisher(JsonSerializer(), offline).publish(
        "welcome-emails", {"to": "early@example.com", "name": "E"}
    )
    offline.close_connection()

    mailer = OutboxMailer()
    app = create_app(SQLiteBackend(path), mailer)
    with TestClient(app) as client:
        client.post("/signups", json={"email": "late@example.com", "name": "L"})
        wait_until(lambda: consumer_stats(client)["acknowledged"] == 2, timeout=10)
    assert sorted(mailer.sent) == [
        ("early@example.com", "Welcome, E!"),
        ("late@example.com", "Welcome, L!"),
    ]
    check = SQLiteBackend(path)
    try:
        assert check.queue_stats("welcome-emails").total == 0
    finally:
        check.close_connection()


def test_on_rabbitmq_with_the_asyncio_backend(
    unique: str, rabbitmq_queues: Callable[..., None]
) -> None:
    queue, dead_letters = f"signups-{unique}", f"signups-{unique}-dlq"
    rabbitmq_queues(queue, dead_letters)
    mailer = OutboxMailer()
    app = create_app(
        AsyncRabbitMQBackend(RABBITMQ_URL), mailer, queue=queue, dead_letter_queue=dead_letters
    )
    with TestClient(app) as client:
        sign_up_three(client)
        wait_until(lambda: consumer_stats(client)["acknowledged"] == 3, timeout=20)
    assert sorted(to for to, _ in mailer.sent) == [f"user{n}@example.com" for n in range(3)]
    assert app.state.consuming.exception() is None
