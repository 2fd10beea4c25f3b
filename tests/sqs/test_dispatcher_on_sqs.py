"""A dispatcher consuming from SQS: heartbeats, stops, and broker errors while settling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import receive


def test_the_backend_visibility_timeout_is_requested_on_every_receive(
    make_aws_backend: Callable[..., AWSBackend], names: Any
) -> None:
    # The queue hides received messages for 30 s; the backend asks for 1 s, as 7.2.0 did.
    backend = make_aws_backend(visibility_timeout=1, wait_time_seconds=1)
    name = names.queue()
    MessagingBackendFactory(backend).init_queue(name, visibility_timeout=30)
    QueuePublisher(JsonSerializer(), backend).publish(name, {"n": 1})
    [first] = receive(backend, backend.get_queue(name), 1)
    [again] = receive(backend, backend.get_queue(name), 1, timeout=10)
    assert again.message_id == first.message_id
    assert again.attempt == 2
    backend.acknowledge(again)


def test_heartbeat_keeps_a_slow_message_from_being_delivered_twice(
    make_aws_backend: Callable[..., AWSBackend], names: Any
) -> None:
    # Received with a 2 s visibility timeout, the message would reappear while the handler
    # runs for 4 s; the heartbeat extends it, so a second consumer never sees it.
    backend = make_aws_backend(visibility_timeout=2, wait_time_seconds=1)
    other = make_aws_backend(visibility_timeout=2, wait_time_seconds=1)
    name = names.queue()
    MessagingBackendFactory(backend).init_queue(name)
    QueuePublisher(JsonSerializer(), backend).publish(name, {"slow": True})
    seen_by_other: list[Any] = []
    started = threading.Event()

    def slow(message: Any) -> None:
        started.set()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            seen_by_other.extend(other.retrieve_messages(other.get_queue(name), wait_seconds=1))

    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=slow)]
    )
    assert dispatcher.consume_event(name, wait_seconds=5) == 1
    assert started.is_set()
    assert seen_by_other == []
    assert backend.retrieve_messages(backend.get_queue(name), wait_seconds=2) == []


def test_stop_returns_within_one_long_poll(
    make_aws_backend: Callable[..., AWSBackend], names: Any
) -> None:
    backend = make_aws_backend(wait_time_seconds=2)
    name = names.queue()
    MessagingBackendFactory(backend).init_queue(name)
    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend)
    loop = threading.Thread(
        target=dispatcher.consume_loop, args=(name,), kwargs={"install_signal_handlers": False}
    )
    loop.start()
    time.sleep(0.5)  # let it block in a long poll
    stopped = time.monotonic()
    dispatcher.stop()
    loop.join(timeout=15)
    assert not loop.is_alive()
    assert time.monotonic() - stopped < 2 + 1.5


def test_a_failed_acknowledgement_does_not_end_the_consume_loop(
    make_aws_backend: Callable[..., AWSBackend], sqs: Any, names: Any
) -> None:
    # The handler deletes the queue, so the batched delete that follows fails on the broker.
    backend = make_aws_backend(wait_time_seconds=1)
    name = names.queue()
    MessagingBackendFactory(backend).init_queue(name)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    handled = threading.Event()

    def delete_queue(message: Any) -> None:
        sqs.delete_queue(QueueUrl=url)
        handled.set()

    errors: list[Exception] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=delete_queue)]
    )
    QueuePublisher(JsonSerializer(), backend).publish(name, {"n": 1})
    ended_by: list[BaseException] = []

    def run() -> None:
        try:
            dispatcher.consume_loop(name, install_signal_handlers=False, on_exception=errors.append)
        except BaseException as exc:
            ended_by.append(exc)

    loop = threading.Thread(target=run)
    loop.start()
    try:
        assert handled.wait(timeout=20)
        deadline = time.monotonic() + 10
        while not (errors or ended_by) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ended_by, f"consume_loop ended with {ended_by[0]!r}"
        assert errors, "the failed acknowledgement was not reported"
        assert loop.is_alive()
    finally:
        dispatcher.stop()
        loop.join(timeout=15)
    assert not loop.is_alive()


def test_with_every_default_the_policy_dead_letters_before_the_redrive_and_says_why(
    make_aws_backend: Callable[..., AWSBackend], names: Any
) -> None:
    """SQS queues get 7.2.0's redrive count (4) and the default policy makes 4 attempts: the
    dispatcher, which records why, must dead-letter before SQS moves the message silently."""
    from melange.models import FAILURE_ATTEMPTS, FAILURE_EXCEPTION, FAILURE_REASON

    backend = make_aws_backend(visibility_timeout=1, wait_time_seconds=1)
    name, dlq = names.queue(), names.queue()
    MessagingBackendFactory(backend).init_queue(name, dead_letter_queue_name=dlq)
    QueuePublisher(JsonSerializer(), backend).publish(name, {"n": 1})

    def refuse(message: Any) -> None:
        raise LookupError("no such customer")

    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=refuse)]
    )
    deadline = time.monotonic() + 60
    while dispatcher.stats.dead_lettered == 0 and time.monotonic() < deadline:
        dispatcher.consume_event(name, wait_seconds=1)
    [dead] = receive(backend, backend.get_queue(dlq), 1)
    assert dead.headers[FAILURE_ATTEMPTS] == "4"
    assert dead.headers[FAILURE_EXCEPTION] == "builtins.LookupError"
    assert "gave up after 4 attempt(s)" in dead.headers[FAILURE_REASON]
    assert dispatcher.stats.as_dict()["dead_lettered"] == 1
