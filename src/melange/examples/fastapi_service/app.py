"""Sign-ups: ``POST /signups`` publishes a ``welcome-email`` message, which the service itself
consumes on the same event loop and hands to a mailer.

The consume loop runs in the application's lifespan: started before the first request is
served, stopped (finishing the messages in hand) when the server shuts down. The server
(uvicorn, hypercorn) owns SIGINT and SIGTERM, so the loop installs no signal handlers.

::

    MELANGE_BACKEND_URL=amqp://guest:guest@localhost:5672/%2F \\
        uvicorn --factory melange.examples.fastapi_service.app:create_app
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from melange.aio import AsyncMessageDispatcher, AsyncQueuePublisher
from melange.backends.async_interfaces import AsyncMessagingBackend, as_async
from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import backend_from_env
from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy
from melange.serializers.json import JsonSerializer

#: The queue the service publishes to and consumes, and its dead-letter queue.
QUEUE = "welcome-emails"
DEAD_LETTERS = "welcome-emails-dlq"


class Mailer(Protocol):
    """What sends an email (an SMTP client, a provider's API)."""

    async def send(self, to: str, subject: str) -> None:
        """Send one email; raise to have the message retried."""


class OutboxMailer:
    """A mailer that keeps what it would send, in order (for development and tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, to: str, subject: str) -> None:
        self.sent.append((to, subject))


class SignUp(BaseModel):
    """The body of ``POST /signups``."""

    email: str
    name: str


def create_app(
    backend: MessagingBackend | AsyncMessagingBackend | None = None,
    mailer: Mailer | None = None,
    *,
    queue: str = QUEUE,
    dead_letter_queue: str = DEAD_LETTERS,
    concurrency: int = 16,
    failure_policy: FailurePolicy | None = None,
) -> FastAPI:
    """The service's ASGI application.

    Args:
        backend: Where messages go: a blocking backend (its calls run on worker threads) or
            an asynchronous one such as ``AsyncRabbitMQBackend``. Default: the one
            ``MELANGE_BACKEND_URL`` names. The application closes it on shutdown.
        mailer: What the consumer sends emails with (default: an :class:`OutboxMailer`).
        queue: The queue published to and consumed.
        dead_letter_queue: Where messages go after the failure policy's last attempt.
        concurrency: Messages handled at once by the consume loop.
        failure_policy: Retries before dead-lettering (default: the dispatcher's).
    """
    aio = as_async(backend if backend is not None else backend_from_env())
    outbox = mailer if mailer is not None else OutboxMailer()
    serializer = JsonSerializer()
    publisher = AsyncQueuePublisher(serializer, aio)

    async def send_welcome(email: dict[str, Any]) -> None:
        await outbox.send(email["to"], f"Welcome, {email['name']}!")

    dispatcher = AsyncMessageDispatcher(
        serializer,
        backend=aio,
        consumers=[Consumer(send_welcome, name="signups.welcome-email")],
        failure_policy=failure_policy,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Declaring is idempotent: every replica may do it at start-up.
        await aio.declare_queue(queue, dead_letter_queue_name=dead_letter_queue)
        consuming = asyncio.create_task(
            dispatcher.consume_loop(queue, concurrency=concurrency, install_signal_handlers=False)
        )
        app.state.consuming = consuming
        try:
            yield
        finally:
            # Finish and settle the messages in hand; the others go back to the broker.
            dispatcher.stop()
            try:
                await consuming
            finally:
                await aio.aclose()

    app = FastAPI(title="sign-ups", lifespan=lifespan)
    app.state.dispatcher = dispatcher
    app.state.mailer = outbox

    @app.post("/signups", status_code=202)
    async def sign_up(signup: SignUp) -> dict[str, str]:
        """Accept a sign-up; the welcome email is sent by the consumer, not in the request."""
        message = await publisher.publish(queue, {"to": signup.email, "name": signup.name})
        return {"message_id": message.message_id}

    @app.get("/consumer")
    async def consumer_stats() -> dict[str, int]:
        """What the consume loop has done; 503 when it is not running (a readiness probe)."""
        consuming: asyncio.Task[None] | None = getattr(app.state, "consuming", None)
        if consuming is None or consuming.done():
            raise HTTPException(status_code=503, detail="the consume loop is not running")
        return dispatcher.stats.as_dict()

    return app


__all__ = ["DEAD_LETTERS", "QUEUE", "Mailer", "OutboxMailer", "SignUp", "create_app"]
