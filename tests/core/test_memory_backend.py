"""The in-memory backend's broker semantics beyond the shared conformance suite."""

from __future__ import annotations

from typing import Any

import pytest

from melange import (
    Consumer,
    InMemoryMessagingBackend,
    JsonSerializer,
    MessagingBackendFactory,
    PickleSerializer,
    QueuePublisher,
    TopicPublisher,
    link_synchronously,
)
from melange.exceptions import ConfigurationError, MessageTooLargeError, QueueNotFoundError
from melange.models import FAILURE_REASON, Message
from melange.policy import FailurePolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_visibility_timeout_redelivers_without_counting_an_attempt() -> None:
    clock = Clock()
    backend = InMemoryMessagingBackend(visibility_timeout=30, clock=clock)
    q, _ = backend.declare_queue("q")
    backend.publish_to_queue(Message.create("x", "json", 1), q)
    [first] = backend.retrieve_messages(q)
    assert first.attempt == 1
    clock.now += 29
    assert backend.retrieve_messages(q) == []
    clock.now += 2
    [second] = backend.retrieve_messages(q)
    # Its receiver died or stalled: no handler reported a failure, so no attempt was used.
    assert second.attempt == 1
    backend.acknowledge(first)  # a late ack of an expired lease is a no-op
    assert backend.queue_depth("q") == 1
    backend.acknowledge(second)
    assert backend.queue_depth("q") == 0


def test_native_dead_letter_after_max_receive_count_keeps_the_envelope() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue(
        "q", dead_letter_queue_name="dlq", max_receive_count=2
    )
    q = backend.get_queue("q")
    backend.publish_to_queue(Message.create("x", "m", 1, {"correlation_id": "c"}), q)
    for _ in range(2):
        [m] = backend.retrieve_messages(q)
        backend.nack(m)
    assert backend.retrieve_messages(q) == []
    [dead] = backend.peek("dlq")
    assert (dead.content, dead.manifest, dead.serializer_id) == ("x", "m", 1)
    assert dead.headers["correlation_id"] == "c"
    assert "max receive count" in dead.headers[FAILURE_REASON]


def test_queue_delay_seconds_holds_new_messages_back() -> None:
    clock = Clock()
    backend = InMemoryMessagingBackend(clock=clock)
    q, _ = backend.declare_queue("q", delay_seconds=5)
    backend.publish_to_queue(Message.create("x", "json", 1), q)
    assert backend.retrieve_messages(q) == []
    clock.now += 5
    assert len(backend.retrieve_messages(q)) == 1


def test_fifo_deduplication_id_drops_repeats_within_the_window() -> None:
    clock = Clock()
    backend = InMemoryMessagingBackend(clock=clock)
    MessagingBackendFactory(backend).init_queue("q.fifo")
    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("q.fifo", 1, message_group_id="g", message_deduplication_id="d")
    publisher.publish("q.fifo", 1, message_group_id="g", message_deduplication_id="d")
    assert backend.queue_depth("q.fifo") == 1
    clock.now += 301
    publisher.publish("q.fifo", 1, message_group_id="g", message_deduplication_id="d")
    assert backend.queue_depth("q.fifo") == 2


def test_fifo_publish_without_group_is_refused() -> None:
    backend = InMemoryMessagingBackend()
    MessagingBackendFactory(backend).init_queue("q.fifo")
    with pytest.raises(ConfigurationError, match="message_group_id"):
        QueuePublisher(JsonSerializer(), backend).publish("q.fifo", 1)


def test_missing_destinations_raise_unless_auto_create() -> None:
    strict = InMemoryMessagingBackend()
    with pytest.raises(QueueNotFoundError, match="init_queue"):
        QueuePublisher(JsonSerializer(), strict).publish("nope", 1)
    relaxed = InMemoryMessagingBackend(auto_create=True)
    QueuePublisher(JsonSerializer(), relaxed).publish("nope", 1)
    assert relaxed.queue_depth("nope") == 1


def test_size_limit_is_enforced_before_enqueueing() -> None:
    backend = InMemoryMessagingBackend(max_message_size=100)
    MessagingBackendFactory(backend).init_queue("q")
    with pytest.raises(MessageTooLargeError, match="100-byte limit"):
        QueuePublisher(JsonSerializer(), backend).publish("q", "x" * 200)
    assert backend.queue_depth("q") == 0


def test_unknown_queue_option_is_reported() -> None:
    with pytest.raises(ConfigurationError, match="visiblity_timeout"):
        InMemoryMessagingBackend().declare_queue("q", visiblity_timeout=3)


def test_topic_filter_delivers_only_listed_manifests() -> None:
    backend = InMemoryMessagingBackend()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("all", "events")
    factory.init_queue("dicts-only", "events", filter_events=["dict"])
    publisher = TopicPublisher(PickleSerializer(), backend)
    publisher.publish("events", {"a": 1})
    publisher.publish("events", [1])
    assert backend.queue_depth("all") == 2
    assert [m.manifest for m in backend.peek("dicts-only")] == ["dict"]


def test_link_synchronously_dispatches_each_message_exactly_once() -> None:
    backend = InMemoryMessagingBackend()
    seen: list[Any] = []
    link_synchronously("q", [Consumer(seen.append)], JsonSerializer(), backend)
    publisher = QueuePublisher(JsonSerializer(), backend)
    for i in range(5):
        publisher.publish("q", i)
    assert seen == [0, 1, 2, 3, 4]
    assert backend.queue_depth("q") == 0


def test_link_synchronously_reaches_consumers_through_a_topic_of_the_same_name() -> None:
    backend = InMemoryMessagingBackend()
    seen: list[Any] = []
    link_synchronously("orders", Consumer(seen.append), JsonSerializer(), backend)
    TopicPublisher(JsonSerializer(), backend).publish("orders", {"id": 1})
    assert seen == [{"id": 1}]


def test_link_synchronously_keeps_failed_messages_for_redelivery() -> None:
    backend = InMemoryMessagingBackend()
    calls: list[Any] = []

    def flaky(message: Any) -> None:
        calls.append(message)
        if message == "bad" and calls.count("bad") == 1:
            raise RuntimeError("first try fails")

    link_synchronously(
        "q", [Consumer(flaky)], JsonSerializer(), backend, failure_policy=FailurePolicy.no_delay()
    )
    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("q", "bad")
    assert backend.queue_depth("q") == 1
    publisher.publish("q", "next")
    assert calls == ["bad", "bad", "next"]
    assert backend.queue_depth("q") == 0


def test_synchronous_consumers_may_publish_without_recursing() -> None:
    backend = InMemoryMessagingBackend()
    publisher = QueuePublisher(JsonSerializer(), backend)
    log: list[str] = []

    def ping(n: Any) -> None:
        log.append(f"start {n}")
        if n < 3:
            publisher.publish("q", n + 1)
        log.append(f"end {n}")

    link_synchronously("q", [Consumer(ping)], JsonSerializer(), backend)
    publisher.publish("q", 0)
    assert log == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]


def test_a_blocked_receiver_wakes_for_every_publish_without_missing_one() -> None:
    import threading
    import time

    backend = InMemoryMessagingBackend()
    q, _ = backend.declare_queue("q")
    for round_ in range(200):
        got: list[Message] = []
        receiver = threading.Thread(
            target=lambda got=got: got.extend(backend.retrieve_messages(q, wait_seconds=20))
        )
        receiver.start()
        if round_ % 2:
            time.sleep(0.001)  # publish both before and after the receiver starts waiting
        started = time.monotonic()
        backend.publish_to_queue(Message.create(str(round_), "json", 1), q)
        receiver.join(10)
        assert time.monotonic() - started < 5, f"receiver missed the wake-up in round {round_}"
        assert [m.content for m in got] == [str(round_)]
        backend.acknowledge_batch(got)


def test_two_blocked_receivers_of_one_queue_each_wake_for_the_publish_after_theirs() -> None:
    import threading
    import time

    # A publish wakes every receiver waiting on the queue; the one that finds nothing waits
    # again, and the next publish must wake it (not be taken for already rung).
    backend = InMemoryMessagingBackend()
    q, _ = backend.declare_queue("q")
    got: list[str] = []
    lock = threading.Lock()

    def receive() -> None:
        for _ in range(20):
            batch = backend.retrieve_messages(q, max_messages=1, wait_seconds=20)
            with lock:
                got.extend(m.content for m in batch)
            backend.acknowledge_batch(batch)
            if len(got) >= 10:
                return

    receivers = [threading.Thread(target=receive, daemon=True) for _ in range(2)]
    for receiver in receivers:
        receiver.start()
    for n in range(10):
        time.sleep(0.02)  # both receivers are waiting again
        started = time.monotonic()
        backend.publish_to_queue(Message.create(str(n), "json", 1), q)
        while True:
            with lock:
                if str(n) in got:
                    break
            assert time.monotonic() - started < 5, f"no receiver woke for message {n}"
            time.sleep(0.001)
    backend.interrupt()
    assert sorted(got, key=int) == [str(n) for n in range(10)]


def test_concurrent_publishers_and_consumers_lose_and_repeat_nothing() -> None:
    import threading

    backend = InMemoryMessagingBackend()
    q, _ = backend.declare_queue("q")
    per_publisher, publishers = 2000, 4
    seen: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def publish(p: int) -> None:
        for i in range(per_publisher):
            backend.publish_to_queue(Message.create(f"{p}-{i}", "json", 1), q)

    def consume() -> None:
        while not done.is_set():
            batch = backend.retrieve_messages(q, wait_seconds=0.2)
            with lock:
                seen.extend(m.content for m in batch)
                if len(seen) >= per_publisher * publishers:
                    done.set()
            backend.acknowledge_batch(batch)

    threads = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    threads += [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == len(set(seen)) == per_publisher * publishers
    assert backend.queue_depth("q") == 0
