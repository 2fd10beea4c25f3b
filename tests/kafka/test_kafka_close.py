"""Closing a Kafka backend ends its librdkafka clients: an open producer or administration
client goes on reconnecting to the brokers, with its threads, for as long as the backend
object lives, and fills the output of whatever runs after its broker went away with
``Connect to ... failed: Connection refused`` lines."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from melange.backends.kafka import KafkaBackend
from melange.exceptions import BackendError
from melange.models import Message

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc"),
]


def librdkafka_threads() -> int:
    """librdkafka's threads in this process (it names them ``rdk:...``)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            if Path(f"/proc/self/task/{task}/comm").read_text().startswith("rdk:"):
                count += 1
    return count


def test_closing_ends_every_client_and_refuses_later_publishes_and_receives(
    make_kafka: Callable[..., KafkaBackend],
) -> None:
    before = librdkafka_threads()
    backend = make_kafka()
    queue, _ = backend.declare_queue(f"kclose-{uuid.uuid4().hex[:8]}")
    backend.publish_to_queue(Message.create('{"n": 1}', "json", 1), queue)
    received = backend.retrieve_messages(queue, wait_seconds=10)
    assert len(received) == 1
    backend.acknowledge_batch(received)
    assert librdkafka_threads() > before  # producer, consumer, administration

    backend.close_connection()
    deadline = time.monotonic() + 5
    while librdkafka_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert librdkafka_threads() <= before, "a librdkafka client outlived the backend's close"

    with pytest.raises(BackendError, match="closed"):
        backend.publish_to_queue(Message.create('{"n": 2}', "json", 1), queue)
    # A receive would open a new consumer, which nothing would close.
    with pytest.raises(BackendError, match="closed"):
        backend.retrieve_messages(queue, wait_seconds=0)
    assert librdkafka_threads() <= before
    backend.close_connection()  # again: nothing left to close
