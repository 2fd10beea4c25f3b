"""What a partition replays after it moves to another consumer.

Kafka keeps one committed offset per partition, and whoever takes a partition next reads
again from there. A record held back for a later attempt would keep that offset before it:
an original that failed, and whose retry record was written, would then be handed out again
as its first attempt, and its failure would start a second line of retries (under the chaos
harness, one of three consumers killed every few seconds, a failing message made up to 33
dead letters). Held records live in the queue's retry topic instead, and move to its end
once settled records wait behind them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from tansu_broker import ASYNC_TEST_OPTIONS

from melange import JsonSerializer, QueuePublisher
from melange.backends.interfaces import MessagingBackend
from melange.backends.kafka import AsyncKafkaBackend, KafkaBackend
from melange.models import Message
from melange.testing.blocking import as_blocking

pytestmark = [pytest.mark.kafka]

#: Opens a backend of one partition per topic under the test's API.
Opener = Callable[[], MessagingBackend]


@pytest.fixture(params=["threaded", "asyncio"])
def open_backend(
    request: pytest.FixtureRequest, kafka_url: str, make_kafka: Callable[..., KafkaBackend]
) -> Iterator[Opener]:
    """Backends of the blocking API, or of the asyncio one (run through ``as_blocking``)."""
    opened: list[MessagingBackend] = []

    def open_one() -> MessagingBackend:
        if request.param == "threaded":
            return make_kafka(partitions=1)
        options = {**ASYNC_TEST_OPTIONS, "partitions": 1}
        backend = as_blocking(AsyncKafkaBackend(kafka_url, **options))  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield open_one
    for backend in opened:
        backend.close_connection()


def _receive(backend: MessagingBackend, name: str, want: int, seconds: float) -> list[Message]:
    queue = backend.get_queue(name)
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        got += backend.retrieve_messages(queue, max_messages=10, wait_seconds=1)
    return got


def test_a_nacked_record_does_not_come_back_as_its_first_attempt_when_its_partition_moves(
    open_backend: Opener,
) -> None:
    first = open_backend()
    name = f"replay-{uuid.uuid4().hex[:8]}"
    first.declare_queue(name)
    publisher = QueuePublisher(JsonSerializer(), backend=first)
    held_id = publisher.publish(name, {"n": 0}).message_id
    nacked_id = publisher.publish(name, {"n": 1}).message_id
    received = {m.message_id: m for m in _receive(first, name, 2, 30)}
    assert set(received) == {held_id, nacked_id}
    # The first record is held back for a minute: the partition's committed offset stays
    # before it. The second fails: its retry record is written, the original is done.
    first.release(received[held_id], delay=60)
    first.nack(received[nacked_id], delay=0)
    # Its consumer leaves (committing what it can); another takes the partition.
    first.close_connection()
    second = open_backend()
    again = _receive(second, name, 3, 30)
    attempts = sorted((m.attempt or 0) for m in again if m.message_id == nacked_id)
    # The retry, as the second attempt, and nothing else of that message.
    assert attempts == [2]


def test_a_retry_waiting_for_long_does_not_keep_what_was_settled_after_it_uncommitted(
    open_backend: Opener, make_kafka: Callable[..., KafkaBackend]
) -> None:
    backend = open_backend()
    inspector = make_kafka(partitions=1)
    name = f"held-{uuid.uuid4().hex[:8]}"
    backend.declare_queue(name)
    publisher = QueuePublisher(JsonSerializer(), backend=backend)
    held_id = publisher.publish(name, {"n": 0}).message_id
    failed_id = publisher.publish(name, {"n": 1}).message_id
    received = {m.message_id: m for m in _receive(backend, name, 2, 30)}
    # One waits a minute for its next attempt; the other fails, and its retry succeeds.
    backend.release(received[held_id], delay=60)
    backend.nack(received[failed_id], delay=0)
    (retried,) = _receive(backend, name, 1, 30)
    assert (retried.message_id, retried.attempt) == (failed_id, 2)
    backend.acknowledge(retried)
    # Receiving goes on: the held retry moves behind the settled one, so a crash now
    # would deliver again only the message that is still waiting.
    deadline = time.monotonic() + 20
    while inspector.queue_depth(name) != 1 and time.monotonic() < deadline:
        assert backend.retrieve_messages(backend.get_queue(name), wait_seconds=0.5) == []
    assert inspector.queue_depth(name) == 1
    (waiting,) = inspector.peek(name)
    assert waiting.message_id == held_id
