"""What the in-memory backend keeps as queues grow: lease entries follow the messages in
flight, a receive takes messages one at a time from the backlog, and messages are held
compactly without changing what receivers get."""

from __future__ import annotations

import platform
import sys

import pytest

from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.memory.topology import GroupedStored, Stored
from melange.models import FAILURE_REASON, Message


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _message(index: int, **headers: str) -> Message:
    return Message.create(f'{{"n": {index}}}', "json", 1, headers or None)


def test_acknowledged_messages_leave_no_lease_entries() -> None:
    backend = InMemoryMessagingBackend(visibility_timeout=30.0, clock=FakeClock())
    queue, _ = backend.declare_queue("jobs")
    backend.publish_batch_to_queue([_message(i) for i in range(5000)], queue)
    state = backend._queues["jobs"]
    largest = 0
    while received := backend.retrieve_messages(queue, max_messages=10):
        largest = max(largest, len(state.leases))
        backend.acknowledge_batch(received)
    assert largest <= 2 * 10 + 32
    # Nothing in flight: no entry is left to pin the memory of the drained messages.
    assert not state.leases
    assert not state.inflight


def test_extended_and_released_leases_do_not_pile_up() -> None:
    clock = FakeClock()
    backend = InMemoryMessagingBackend(visibility_timeout=30.0, clock=clock)
    queue, _ = backend.declare_queue("jobs")
    backend.publish_to_queue(_message(1), queue)
    [message] = backend.retrieve_messages(queue)
    for _ in range(1000):
        backend.extend_visibility(message, 30.0)
    state = backend._queues["jobs"]
    assert len(state.leases) <= 2 + 32
    # The live lease survived the compactions: it runs out 30 s after the last extension.
    clock.now += 29.0
    assert backend.retrieve_messages(queue) == []
    clock.now += 2.0
    [again] = backend.retrieve_messages(queue)
    assert again.message_id == message.message_id


def test_a_receive_takes_only_what_it_returns_from_the_backlog() -> None:
    backend = InMemoryMessagingBackend()
    queue, _ = backend.declare_queue("jobs")
    backend.publish_batch_to_queue([_message(i) for i in range(1000)], queue)
    first = backend.retrieve_messages(queue, max_messages=3)
    state = backend._queues["jobs"]
    assert len(state.inbox) == 997 and not state.ready
    assert [m.content for m in first] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    assert backend.queue_depth("jobs") == 1000


def test_topic_publishes_keep_their_order_with_direct_ones() -> None:
    backend = InMemoryMessagingBackend()
    topic = backend.declare_topic("events")
    queue, _ = backend.declare_queue("jobs", topic)
    for index in range(6):
        if index % 2:
            backend.publish_to_topic(_message(index), topic)
        else:
            backend.publish_to_queue(_message(index), queue)
    received = backend.retrieve_messages(queue, max_messages=10)
    assert [m.content for m in received] == [f'{{"n": {i}}}' for i in range(6)]


def test_messages_are_stored_compactly_and_received_whole() -> None:
    backend = InMemoryMessagingBackend()
    queue, _ = backend.declare_queue("jobs")
    fifo, _ = backend.declare_queue("jobs.fifo")
    plain = _message(1, a="1", b="2")
    backend.publish_to_queue(plain, queue)
    plain.headers["a"] = "changed after publishing"
    grouped = _message(2)
    grouped.group_id, grouped.deduplication_id = "g", "d"
    backend.publish_to_queue(grouped, fifo)
    stored = backend._queues["jobs"].inbox[0]
    assert type(stored) is Stored and not hasattr(stored, "__dict__")
    assert isinstance(stored.headers, tuple)
    assert isinstance(backend._queues["jobs.fifo"].ready[0], GroupedStored)
    [got] = backend.retrieve_messages(queue)
    assert got.headers == {**plain.headers, "a": "1"}
    got.headers["b"] = "changed by the receiver"
    [got_grouped] = backend.retrieve_messages(fifo)
    assert (got_grouped.group_id, got_grouped.deduplication_id) == ("g", "d")
    assert got_grouped.headers == grouped.headers


def test_dead_lettered_messages_keep_their_headers_and_gain_the_failure() -> None:
    backend = InMemoryMessagingBackend()
    queue, _ = backend.declare_queue("jobs", dead_letter_queue_name="jobs-dlq")
    backend.publish_to_queue(_message(1, trace="t-1"), queue)
    [message] = backend.retrieve_messages(queue)
    assert backend.dead_letter(message, {FAILURE_REASON: "boom"})
    [dead] = backend.peek("jobs-dlq")
    assert dead.headers["trace"] == "t-1"
    assert dead.headers[FAILURE_REASON] == "boom"
    assert backend.queue_depth("jobs") == 0


def test_ids_and_lone_publish_times_are_packed_yet_received_exactly_as_published() -> None:
    backend = InMemoryMessagingBackend()
    queue, _ = backend.declare_queue("jobs")
    usual = Message.create('{"n": 1}', "json", 1)  # a fresh id and only published_at
    ids = [
        usual.message_id,
        "00000000000000000000000000000abc",  # leading zeros survive
        "ABCDEF0123456789ABCDEF0123456789",  # upper case is not Melange's: kept as given
        "0x" + "1" * 30,  # parses as hex with a prefix: kept as given
        "not-a-hex-id",
    ]
    times = [
        usual.headers["published_at"],
        "1700000000.000001",
        "1700000000.5",  # another writer's format
        "01700000000.000000",
        "soon",
    ]
    sent = []
    for message_id, published_at in zip(ids, times, strict=True):
        message = Message(message_id, '{"n": 2}', manifest="json", serializer_id=1)
        message.headers = {"published_at": published_at}
        sent.append(message)
        backend.publish_to_queue(message, queue)
    assert isinstance(backend._queues["jobs"].inbox[0].headers, int)
    received = backend.retrieve_messages(queue, max_messages=10)
    assert [m.message_id for m in received] == ids
    assert [m.headers for m in received] == [{"published_at": t} for t in times]


def test_a_usual_message_keeps_its_id_and_publish_time_through_every_path() -> None:
    backend = InMemoryMessagingBackend(visibility_timeout=30.0, clock=FakeClock())
    queue, _ = backend.declare_queue("jobs", dead_letter_queue_name="jobs-dlq")
    usual = [Message.create(f'{{"n": {i}}}', "json", 1) for i in range(3)]
    late = Message.create('{"n": 3}', "json", 1)
    late.headers["published_at"] = "9999999999.000001"  # beyond the packed range
    sent = [*usual, late]
    backend.publish_batch_to_queue(sent, queue)
    assert [m.message_id for m in backend.peek("jobs")] == [m.message_id for m in sent]
    first, second, third, fourth = backend.retrieve_messages(queue, max_messages=10)
    backend.nack(second)
    assert backend.dead_letter(third, {FAILURE_REASON: "boom"})
    backend.acknowledge_batch([first, fourth])
    [again] = backend.retrieve_messages(queue)
    [dead] = backend.retrieve_messages(backend.get_queue("jobs-dlq"))
    for got, original in [(fourth, late), (again, usual[1]), (dead, usual[2])]:
        assert got.message_id == original.message_id
        assert got.headers["published_at"] == original.headers["published_at"]
    assert dead.headers[FAILURE_REASON] == "boom"


def test_a_publish_wakes_only_the_receivers_of_the_queues_it_reached() -> None:
    import threading
    import time

    backend = InMemoryMessagingBackend()
    busy, _ = backend.declare_queue("busy")
    events = backend.declare_topic("events")
    idle, _ = backend.declare_queue("idle", events, filter_events=["Wanted"])
    got: list[Message] = []
    receiver = threading.Thread(
        target=lambda: got.extend(backend.retrieve_messages(idle, wait_seconds=10))
    )
    receiver.start()
    deadline = time.monotonic() + 5
    while not backend._waiting.get("idle") and time.monotonic() < deadline:
        time.sleep(0.01)
    condition = backend._arrived["idle"]
    wakes = []
    notify_all = condition.notify_all
    condition.notify_all = lambda: (wakes.append(1), notify_all())[1]  # type: ignore[method-assign]
    backend.publish_batch_to_queue([_message(i) for i in range(100)], busy)
    for i in range(100):
        backend.publish_to_queue(_message(i), busy)
    other = _message(0)
    other.manifest = "Unwanted"  # filtered out before it reaches the idle queue
    backend.publish_to_topic(other, events)
    assert not wakes and receiver.is_alive()
    backend.publish_to_queue(_message(7), idle)
    receiver.join(5)
    assert len(wakes) == 1
    assert [m.content for m in got] == ['{"n": 7}']


def test_a_drained_large_backlog_gives_its_memory_back_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import melange.backends.memory.backend as memory_backend
    from melange.backends.heap import return_freed_memory

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert return_freed_memory()  # glibc's malloc_trim is found and called
    returned: list[bool] = []
    monkeypatch.setattr(memory_backend, "LARGE_BACKLOG", 500)
    monkeypatch.setattr(memory_backend, "return_freed_memory", lambda: returned.append(True))
    backend = InMemoryMessagingBackend()
    small, _ = backend.declare_queue("small")
    large, _ = backend.declare_queue("large")
    backend.publish_batch_to_queue([_message(i) for i in range(499)], small)
    backend.publish_batch_to_queue([_message(i) for i in range(600)], large)
    for queue in (small, large):
        while received := backend.retrieve_messages(queue, max_messages=50):
            assert not returned or queue is large
            backend.acknowledge_batch(received)
    assert returned == [True]  # the large queue, once, when it was empty
    backend.publish_to_queue(_message(1), large)
    [message] = backend.retrieve_messages(large)
    backend.acknowledge(message)
    assert returned == [True]  # a short queue afterwards does not ask again
