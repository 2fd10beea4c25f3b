"""What every example service process needs: a backend from a URL, a publisher that says
who sent each event, a reporter that prints the flow, and a ``main`` that runs a service.

Every service prints one line per thing it does, ``[service] text``, so that several service
processes writing to one terminal (as ``melange demo`` arranges) read as one story.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import backend_from_env, backend_from_url
from melange.context import current_message
from melange.exceptions import MelangeError
from melange.message_dispatcher import MessageDispatcher
from melange.policy import FailurePolicy
from melange.publishers import TopicPublisher
from melange.serializers.interfaces import Serializer

#: The header naming the service that published a message.
SENDER_HEADER = "sender"

#: How the example services retry: quickly, so a demo shows retries without waiting long.
EXAMPLE_POLICY = FailurePolicy(
    max_attempts=4, initial_delay=0.2, backoff_factor=2.0, max_delay=2.0, jitter=0.1
)


class Reporter:
    """Prints what a service does as ``[service] text`` lines, flushed at once.

    Args:
        service: The service's short name.
        stream: Where to write; standard output by default.
    """

    def __init__(self, service: str, stream: TextIO | None = None) -> None:
        self.service = service
        self._stream = stream
        #: Every line reported, oldest first (tests read it).
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)
        stream = self._stream if self._stream is not None else sys.stdout
        print(f"[{self.service}] {text}", file=stream, flush=True)


#: How a service says that the message in hand failed for a passing reason and comes back.
RETRY_NOTE = "the message will be retried"


def consumed(reference: str) -> str:
    """``"consumed OrderCreated A-1001"`` for the message being processed (with ``"(delivery
    N)"`` when it is redelivered); just ``reference`` outside a dispatcher."""
    message = current_message()
    if message is None:
        return reference
    text = f"consumed {message.manifest} {reference}"
    if message.attempt and message.attempt > 1:
        text += f" (delivery {message.attempt})"
    return text


class EventPublisher(Protocol):
    """Where a service publishes its events (``ServicePublisher``, or a fake in tests)."""

    def publish(self, event: Any) -> None:
        """Publish ``event`` to the service's topic."""


class ServicePublisher:
    """Publishes a service's events to its topic.

    Every event carries the ``sender`` header, and each publish is reported.

    Args:
        service: The publishing service's name (the ``sender`` header).
        topic: The topic this service's events go to.
        serializer: The serializer of the example's messages.
        backend: The backend to publish on.
        report: Where to report each publish.
    """

    def __init__(
        self,
        service: str,
        topic: str,
        serializer: Serializer[Any],
        backend: MessagingBackend,
        report: Callable[[str], None],
    ) -> None:
        self._headers = {SENDER_HEADER: service}
        self._topic = topic
        self._topics = TopicPublisher(serializer, backend)
        self._report = report

    def publish(self, event: Any) -> None:
        """Publish ``event`` to this service's topic."""
        self._topics.publish(self._topic, event, headers=self._headers)
        self._report(f"published {event!r} to topic {self._topic}")


def open_backend(url: str | None) -> MessagingBackend:
    """The backend ``url`` names, else the one ``MELANGE_BACKEND_URL`` names, else the
    embedded SQLite default."""
    return backend_from_url(url) if url else backend_from_env()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def service_main(
    service: str,
    description: str,
    queue: str,
    create_dispatcher: Callable[[MessagingBackend], MessageDispatcher],
    argv: Sequence[str] | None = None,
) -> int:
    """Run one example service as a process until SIGINT/SIGTERM; returns the exit status.

    Args:
        service: The service's short name (for its report lines).
        description: What the service does (shown by ``--help``).
        queue: The queue the service consumes.
        create_dispatcher: Builds the service's dispatcher on a backend (declaring the
            example's topology first, so services may start in any order).
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--backend-url",
        help="backend to use (memory://, sqlite:///path.db, amqp://..., sqs://...); "
        "default: $MELANGE_BACKEND_URL, else the embedded SQLite database",
    )
    parser.add_argument("--workers", type=_positive, default=1, help="messages processed at once")
    args = parser.parse_args(argv)
    # The services report what they do themselves; the log adds the dispatcher's view
    # (retries, dead letters) on standard error, one line per event. Imported here because
    # the CLI's demo imports this module.
    from melange.cli._common import configure_logging

    configure_logging("WARNING")
    try:
        backend = open_backend(args.backend_url)
    except MelangeError as exc:
        parser.exit(1, f"error: {exc}\n")
    try:
        dispatcher = create_dispatcher(backend)
        try:
            dispatcher.consume_loop(queue, workers=args.workers)
        finally:
            dispatcher.close()
        counts = dispatcher.stats.as_dict()
        Reporter(service)(
            f"stopped after receiving {counts['received']} message(s): "
            f"{counts['acknowledged']} acknowledged, {counts['retried']} retried, "
            f"{counts['dead_lettered']} dead-lettered"
        )
    finally:
        backend.close_connection()
    return 0
