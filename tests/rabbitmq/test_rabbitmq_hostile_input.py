"""Hostile settings on RabbitMQ: names the broker would choke on are refused before any
request (a newline used to leave ``queue.declare`` unanswered past ``operation_timeout``),
numbers must be finite, and an unreachable broker is one line with its address and the
reason, without pika's error lines for every attempt."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.rabbitmq import RabbitMQBackend
from melange.exceptions import BackendConnectionError, ConfigurationError

BAD_QUEUE_NAMES = {
    "newline": ("bad\nname", "control character"),
    "nul": ("bad\x00name", "control character"),
    "over 215 bytes": ("q" * 216, "at most 215 bytes"),
    "reserved": ("amq.mine", "reserves"),
}


@pytest.mark.parametrize("case", sorted(BAD_QUEUE_NAMES))
def test_a_queue_name_the_broker_would_choke_on_is_refused_at_once(
    make_rabbit: Callable[..., RabbitMQBackend], case: str
) -> None:
    name, says = BAD_QUEUE_NAMES[case]
    backend = make_rabbit(operation_timeout=5)
    factory = MessagingBackendFactory(backend)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=says):
        factory.init_queue(name)
    with pytest.raises(ConfigurationError, match=says):
        backend.declare_queue("fine-but-unused", dead_letter_queue_name=name)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("name", "says"),
    [("bad\nname", "control character"), ("t" * 256, "at most 255 bytes"), ("amq.x", "reserves")],
)
def test_a_topic_name_the_broker_would_choke_on_is_refused_at_once(
    make_rabbit: Callable[..., RabbitMQBackend], name: str, says: str
) -> None:
    backend = make_rabbit(operation_timeout=5)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=says):
        MessagingBackendFactory(backend).init_topic(name)
    with pytest.raises(ConfigurationError, match=says):
        backend.get_topic(name) if "\n" in name else backend.declare_topic(name)
    assert time.monotonic() - started < 2.0


def test_looking_up_a_name_with_a_newline_is_refused_at_once(
    make_rabbit: Callable[..., RabbitMQBackend],
) -> None:
    backend = make_rabbit(operation_timeout=5)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="control character"):
        backend.get_queue("bad\nname")
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -1])
def test_a_visibility_timeout_that_is_not_finite_and_positive_is_refused(
    make_rabbit: Callable[..., RabbitMQBackend], value: float
) -> None:
    backend = make_rabbit()
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        MessagingBackendFactory(backend).init_queue("never-made", visibility_timeout=value)


@pytest.mark.parametrize(
    "option",
    [
        "heartbeat",
        "socket_timeout",
        "retry_delay",
        "prefetch_count",
        "operation_timeout",
        "consumer_idle_timeout",
    ],
)
def test_connection_numbers_must_be_finite(option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        RabbitMQBackend(host="127.0.0.1", **{option: math.nan})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -1])
@pytest.mark.parametrize("option", ["operation_timeout", "consumer_idle_timeout", "prefetch_count"])
def test_the_asyncio_backend_refuses_the_same_numbers(option: str, value: float) -> None:
    from melange.backends.rabbitmq import AsyncRabbitMQBackend

    with pytest.raises(ConfigurationError, match=option):
        AsyncRabbitMQBackend(host="127.0.0.1", **{option: value})  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_broker_is_one_error_with_the_reason_and_no_flood_of_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()  # nothing listens there
    caplog.set_level(logging.INFO)
    with pytest.raises(BackendConnectionError) as caught:
        RabbitMQBackend(host="127.0.0.1", port=port, connection_attempts=3, retry_delay=0.1)
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text
    assert "Connection refused" in text
    pika_errors = [r for r in caplog.records if r.name.startswith("pika") and r.levelno >= 30]
    assert pika_errors == [], [r.getMessage() for r in pika_errors]
