"""The conformance suite every messaging backend must pass.

Written once against the :class:`~melange.backends.interfaces.MessagingBackend` contract; each
test reads the backend's :class:`~melange.backends.interfaces.BackendCapabilities` and skips
what the backend does not claim to support. To check a backend, subclass
:class:`BackendConformance` in a pytest module and provide the ``backend`` fixture (and
``make_backend`` when the backend should open separate connections for concurrent
consumers)::

    from melange.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            backend = MyBackend(...)
            yield backend
            backend.close_connection()

Queues and topics get unique names and are deleted afterwards, so the suite can run against a
shared broker. Requires pytest.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend, QueueWatch
from melange.consumers import Consumer
from melange.exceptions import QueueNotFoundError, TopicNotFoundError
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_REASON, Message, QueueWrapper, TopicWrapper
from melange.policy import FailurePolicy
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer

#: Seconds a test waits for messages to arrive on a real broker.
RECEIVE_TIMEOUT = 15.0


def unique_name(prefix: str = "conf", fifo: bool = False) -> str:
    """A queue or topic name unique to this run (``.fifo`` suffix when asked)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return f"{name}.fifo" if fifo else name


def make_message(content: str, manifest: str = "json", group: str | None = None) -> Message:
    """A JSON-serialized message as a publisher would build it."""
    message = Message.create(content, manifest, 1, {"correlation_id": "corr-1"})
    message.group_id = group
    return message


def receive(
    backend: MessagingBackend,
    queue: QueueWrapper,
    count: int,
    timeout: float = RECEIVE_TIMEOUT,
    max_messages: int = 10,
) -> list[Message]:
    """Receive until ``count`` messages arrived or ``timeout`` passed (without settling them)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(
            backend.retrieve_messages(
                queue, max_messages=min(max_messages, count - len(got)), wait_seconds=1
            )
        )
    return got


def assert_empty(backend: MessagingBackend, queue: QueueWrapper, wait: float = 1.0) -> None:
    """Fail if a message can be received from ``queue`` within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        left = backend.retrieve_messages(queue, wait_seconds=min(1.0, wait))
        assert not left, f"expected {queue.name} to be empty, received {left}"


class Topology:
    """Declares queues and topics with unique names and deletes them at the end."""

    def __init__(self, backend: MessagingBackend) -> None:
        self.backend = backend
        self.factory = MessagingBackendFactory(backend)
        self._queues: list[QueueWrapper] = []
        self._topics: list[TopicWrapper] = []

    def queue(
        self,
        *topics: str,
        fifo: bool = False,
        dlq: bool = False,
        **kwargs: Any,
    ) -> QueueWrapper:
        name = unique_name("q", fifo)
        dlq_name = unique_name("dlq", fifo) if dlq else None
        queue = self.factory.init_queue(name, *topics, dead_letter_queue_name=dlq_name, **kwargs)
        self._queues.append(queue)
        if dlq_name is not None:
            self._queues.append(self.backend.get_queue(dlq_name))
        return queue

    def dead_letter_queue_of(self, queue: QueueWrapper) -> QueueWrapper:
        index = self._queues.index(queue)
        return self._queues[index + 1]

    def topic(self, fifo: bool = False) -> str:
        name = unique_name("t", fifo)
        self._topics.append(self.factory.init_topic(name))
        return name

    def cleanup(self) -> None:
        # Best effort: a shared broker may already have dropped them.
        for queue in self._queues:
            with contextlib.suppress(Exception):
                self.backend.delete_queue(queue)
        for topic in self._topics:
            with contextlib.suppress(Exception):
                self.backend.delete_topic(topic)


def _watch_or_skip(
    backend: MessagingBackend, queue: QueueWrapper, wake: Callable[[], None]
) -> QueueWatch:
    if not backend.capabilities.loop_wait:
        pytest.skip("backend cannot be watched (loop_wait): its waiting receives take a thread")
    watch = backend.watch_queue(queue, wake)
    assert watch is not None, "the descriptor says loop_wait, but watch_queue returned None"
    return watch


class BackendConformance:
    """Subclass this in a test module and provide the ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> Iterator[MessagingBackend]:
        raise NotImplementedError("provide a `backend` fixture that yields the backend to test")

    @pytest.fixture
    def make_backend(self, backend: MessagingBackend) -> Callable[[], MessagingBackend]:
        """Another handle on the same broker, for concurrent consumers (default: the same)."""
        return lambda: backend

    @pytest.fixture
    def topology(self, backend: MessagingBackend) -> Iterator[Topology]:
        topo = Topology(backend)
        yield topo
        topo.cleanup()

    # -- publish, receive, acknowledge ------------------------------------------------------

    def test_published_message_is_received_with_its_envelope(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        sent = make_message('{"n": 1}')
        sent.headers["causation_id"] = "cause-1"
        backend.publish_to_queue(sent, queue)
        [got] = receive(backend, queue, 1)
        assert got.content == '{"n": 1}'
        assert got.manifest == "json"
        assert got.serializer_id == 1
        assert got.message_id
        assert got.headers.get("correlation_id") == "corr-1"
        assert got.headers.get("causation_id") == "cause-1"
        assert got.published_at is not None
        if backend.capabilities.receive_count:
            assert got.attempt == 1
        backend.acknowledge(got)
        assert_empty(backend, queue)

    def test_acknowledged_messages_are_not_delivered_again(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        for i in range(5):
            backend.publish_to_queue(make_message(f'{{"n": {i}}}'), queue)
        got = receive(backend, queue, 5)
        assert sorted(m.content for m in got) == [f'{{"n": {i}}}' for i in range(5)]
        backend.acknowledge_batch(got)
        assert_empty(backend, queue)

    def test_missing_queue_raises_queue_not_found(self, backend: MessagingBackend) -> None:
        with pytest.raises(QueueNotFoundError, match="init_queue"):
            backend.get_queue(unique_name("missing"))

    def test_missing_topic_raises_topic_not_found(self, backend: MessagingBackend) -> None:
        if not backend.capabilities.topics:
            pytest.skip("backend has no topics")
        with pytest.raises(TopicNotFoundError, match="init_topic"):
            backend.get_topic(unique_name("missing"))

    def test_declaring_twice_is_idempotent_and_keeps_messages(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        backend.publish_to_queue(make_message('"kept"'), queue)
        again, _ = backend.declare_queue(queue.name)
        assert again.name == queue.name
        [got] = receive(backend, again, 1)
        assert got.content == '"kept"'
        backend.acknowledge(got)

    # -- redelivery -------------------------------------------------------------------------

    def test_nacked_message_is_redelivered_with_higher_attempt(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        backend.publish_to_queue(make_message('"again"'), queue)
        [first] = receive(backend, queue, 1)
        backend.nack(first)
        [second] = receive(backend, queue, 1)
        assert second.content == '"again"'
        assert second.message_id == first.message_id
        if backend.capabilities.receive_count:
            assert second.attempt == 2
        backend.acknowledge(second)
        assert_empty(backend, queue)

    def test_nack_with_delay_holds_the_message_back(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.delayed_delivery:
            pytest.skip("backend has no delayed redelivery")
        queue = topology.queue()
        backend.publish_to_queue(make_message('"later"'), queue)
        [first] = receive(backend, queue, 1)
        started = time.monotonic()
        backend.nack(first, delay=2.0)
        assert backend.retrieve_messages(queue, wait_seconds=0) == []
        [second] = receive(backend, queue, 1)
        assert time.monotonic() - started >= 1.5
        backend.acknowledge(second)

    def test_unsettled_message_comes_back_after_visibility_timeout(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.visibility_timeout:
            pytest.skip("backend has no visibility timeout")
        queue = topology.queue(visibility_timeout=1)
        backend.publish_to_queue(make_message('"lost receiver"'), queue)
        [first] = receive(backend, queue, 1)
        [second] = receive(backend, queue, 1, timeout=10)
        assert second.message_id == first.message_id
        backend.acknowledge(second)
        assert_empty(backend, queue)

    def test_extend_visibility_keeps_the_message_hidden(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        caps = backend.capabilities
        if not (caps.visibility_timeout and caps.extend_visibility):
            pytest.skip("backend cannot extend visibility")
        queue = topology.queue(visibility_timeout=1)
        backend.publish_to_queue(make_message('"held"'), queue)
        [first] = receive(backend, queue, 1)
        backend.extend_visibility(first, 4)
        time.sleep(1.5)
        assert backend.retrieve_messages(queue, wait_seconds=0) == []
        backend.acknowledge(first)

    # -- topics -----------------------------------------------------------------------------

    def test_topic_fans_out_to_every_subscribed_queue(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.topics:
            pytest.skip("backend has no topics")
        topic = topology.topic()
        queues = [topology.queue(topic) for _ in range(3)]
        backend.publish_to_topic(make_message('{"event": "created"}'), backend.get_topic(topic))
        for queue in queues:
            [got] = receive(backend, queue, 1)
            assert got.content == '{"event": "created"}'
            assert got.manifest == "json"
            assert got.serializer_id == 1
            backend.acknowledge(got)

    def test_filter_events_delivers_only_listed_manifests(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        caps = backend.capabilities
        if not (caps.topics and caps.filter_policies):
            pytest.skip("backend has no subscription filters")
        topic = topology.topic()
        queue = topology.queue(topic, filter_events=["OrderCreated"])
        wrapper = backend.get_topic(topic)
        backend.publish_to_topic(make_message('"skip"', manifest="OrderCancelled"), wrapper)
        backend.publish_to_topic(make_message('"take"', manifest="OrderCreated"), wrapper)
        [got] = receive(backend, queue, 1)
        assert got.content == '"take"'
        backend.acknowledge(got)
        assert_empty(backend, queue, wait=2.0)

    # -- dead letters -----------------------------------------------------------------------

    def test_dead_letter_moves_the_message_with_failure_headers(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue(dlq=True)
        dlq = topology.dead_letter_queue_of(queue)
        sent = make_message('{"bad": true}', manifest="json")
        backend.publish_to_queue(sent, queue)
        [got] = receive(backend, queue, 1)
        assert backend.dead_letter(got, {FAILURE_REASON: "ValueError: boom"}) is True
        assert_empty(backend, queue)
        [dead] = receive(backend, dlq, 1)
        assert dead.content == '{"bad": true}'
        assert dead.manifest == "json"
        assert dead.serializer_id == 1
        assert dead.headers.get(FAILURE_REASON) == "ValueError: boom"
        assert dead.headers.get("correlation_id") == "corr-1"
        backend.acknowledge(dead)

    def test_dead_letter_without_dead_letter_queue_returns_false(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        backend.publish_to_queue(make_message('"stays"'), queue)
        [got] = receive(backend, queue, 1)
        assert backend.dead_letter(got, {FAILURE_REASON: "x"}) is False
        backend.nack(got)
        [again] = receive(backend, queue, 1)
        backend.acknowledge(again)

    def test_broker_dead_letters_after_max_receive_count(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.native_dead_letter:
            pytest.skip("backend has no native dead-lettering")
        queue = topology.queue(dlq=True, max_receive_count=2)
        dlq = topology.dead_letter_queue_of(queue)
        backend.publish_to_queue(make_message('"poison"'), queue)
        # Deliveries that ran no handler (a crash, a release) count towards the backstop.
        for _ in range(2):
            [got] = receive(backend, queue, 1)
            backend.release(got)
        # Like SQS, the broker may move the message when the next receive would exceed the count.
        assert_empty(backend, queue)
        [dead] = receive(backend, dlq, 1)
        assert dead.content == '"poison"'
        backend.acknowledge(dead)

    # -- ordering, batches, payloads, concurrency -------------------------------------------

    def test_fifo_queue_keeps_order_within_a_group(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.fifo:
            pytest.skip("backend has no FIFO queues")
        queue = topology.queue(fifo=True)
        for i in range(12):
            message = make_message(f"{i}", group="a" if i % 2 else "b")
            message.deduplication_id = f"d{i}"
            backend.publish_to_queue(message, queue)
        seen: dict[str, list[int]] = {"a": [], "b": []}
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while sum(map(len, seen.values())) < 12 and time.monotonic() < deadline:
            batch = backend.retrieve_messages(queue, max_messages=3, wait_seconds=1)
            for message in batch:
                assert message.group_id is not None
                seen[message.group_id].append(int(message.content))
            backend.acknowledge_batch(batch)
        assert seen["a"] == [1, 3, 5, 7, 9, 11]
        assert seen["b"] == [0, 2, 4, 6, 8, 10]

    def test_fifo_group_waits_while_its_head_is_in_flight(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.fifo:
            pytest.skip("backend has no FIFO queues")
        queue = topology.queue(fifo=True)
        for i in range(2):
            message = make_message(f"{i}", group="g")
            message.deduplication_id = f"d{i}"
            backend.publish_to_queue(message, queue)
        [head] = receive(backend, queue, 1, max_messages=1)
        assert head.content == "0"
        assert backend.retrieve_messages(queue, wait_seconds=0) == []
        backend.nack(head)
        [again] = receive(backend, queue, 1, max_messages=1)
        assert again.content == "0"
        backend.acknowledge(again)
        [nxt] = receive(backend, queue, 1, max_messages=1)
        assert nxt.content == "1"
        backend.acknowledge(nxt)

    def test_batch_publish_delivers_every_message(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        batch = [make_message(f'{{"i": {i}}}') for i in range(25)]
        backend.publish_batch_to_queue(batch, queue)
        got = receive(backend, queue, 25)
        assert sorted(m.content for m in got) == sorted(m.content for m in batch)
        backend.acknowledge_batch(got)
        assert_empty(backend, queue)

    def test_batch_publish_to_topic_fans_out(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.topics:
            pytest.skip("backend has no topics")
        topic = topology.topic()
        queue = topology.queue(topic)
        batch = [make_message(f'{{"i": {i}}}') for i in range(12)]
        backend.publish_batch_to_topic(batch, backend.get_topic(topic))
        got = receive(backend, queue, 12)
        assert sorted(m.content for m in got) == sorted(m.content for m in batch)
        backend.acknowledge_batch(got)

    def test_large_and_non_ascii_payloads_round_trip(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        limit = backend.capabilities.max_message_size or 1_000_000
        text = "Grüße, 世界, emoji 🎉, quotes \" ' and \\ backslash"
        large = "x" * (min(limit, 256 * 1024) - 4096)
        for content in (text, large):
            backend.publish_to_queue(make_message(content, manifest="ünïcode"), queue)
        got = receive(backend, queue, 2)
        assert sorted(m.content for m in got) == sorted([text, large])
        assert {m.manifest for m in got} == {"ünïcode"}
        backend.acknowledge_batch(got)

    def test_concurrent_consumers_receive_each_message_once(
        self,
        backend: MessagingBackend,
        make_backend: Callable[[], MessagingBackend],
        topology: Topology,
    ) -> None:
        queue = topology.queue()
        total = 60
        backend.publish_batch_to_queue([make_message(str(i)) for i in range(total)], queue)
        seen: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + RECEIVE_TIMEOUT * 2
        # At-least-once: a batch acknowledged after its lease ran out may come back (a very
        # slow broker or machine); only then is a second delivery no failure.
        late: list[float] = []

        def consume() -> None:
            own = make_backend()
            handle = own.get_queue(queue.name)
            while time.monotonic() < deadline:
                with lock:
                    if len(set(seen)) >= total:
                        return
                asked = time.monotonic()
                batch = own.retrieve_messages(handle, max_messages=5, wait_seconds=1)
                with lock:
                    seen.extend(m.content for m in batch)
                own.acknowledge_batch(batch)
                lease = own.visibility_timeout_for(batch[0]) if batch else None
                if lease is not None and time.monotonic() - asked >= lease:
                    with lock:
                        late.append(time.monotonic() - asked)

        threads = [threading.Thread(target=consume) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(set(seen), key=int) == [str(i) for i in range(total)], "messages lost"
        twice = len(seen) - total
        if backend.capabilities.duplicate_deliveries:
            # The broker's own occasional copy (SQS standard queues): rare, never a pattern.
            assert twice <= total // 20, f"{twice} message(s) delivered twice"
        elif not late:
            assert twice == 0, f"{twice} message(s) delivered twice"

    # -- end to end through publishers and a dispatcher --------------------------------------

    def test_dispatcher_retries_then_dead_letters_a_failing_message(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue(dlq=True, max_receive_count=10)
        dlq = topology.dead_letter_queue_of(queue)
        calls: list[Any] = []

        def handle(message: Any) -> None:
            calls.append(message)
            if message["fail"]:
                raise RuntimeError("handler refused")

        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Consumer(on_message=handle)],
            failure_policy=FailurePolicy.no_delay(max_attempts=3),
        )
        publisher = QueuePublisher(JsonSerializer(), backend)
        publisher.publish(queue.name, {"fail": True})
        publisher.publish(queue.name, {"fail": False})
        deadline = time.monotonic() + RECEIVE_TIMEOUT * 2
        while dispatcher.stats.dead_lettered < 1 and time.monotonic() < deadline:
            dispatcher.consume_event(queue.name, wait_seconds=1)
        assert dispatcher.stats.dead_lettered == 1
        assert calls.count({"fail": False}) == 1
        assert 3 <= calls.count({"fail": True}) <= 4
        [dead] = receive(backend, dlq, 1)
        assert "handler refused" in dead.headers[FAILURE_REASON]
        backend.acknowledge(dead)

    # -- waiting without a thread (backends whose descriptor says loop_wait) -----------

    def test_a_watched_queue_wakes_its_watcher_on_a_publish(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        woken = threading.Event()
        watch = _watch_or_skip(backend, queue, woken.set)
        try:
            assert backend.poll_queue(queue, 10)[0] == []
            backend.publish_to_queue(make_message('"ring"'), queue)
            assert woken.wait(RECEIVE_TIMEOUT), "a publish did not wake the watcher"
            assert not watch.interrupted
        finally:
            watch.cancel()
        messages, _ = backend.poll_queue(queue, 10)
        assert [m.content for m in messages] == ['"ring"']
        backend.acknowledge_batch(messages)
        woken.clear()
        backend.publish_to_queue(make_message('"quiet"'), queue)
        assert not woken.wait(0.2), "a cancelled watch was woken"

    def test_an_empty_poll_says_when_to_look_again(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        watch = _watch_or_skip(backend, queue, lambda: None)
        watch.cancel()
        messages, pause = backend.poll_queue(queue, 10)
        assert messages == []
        assert 0 < pause < float("inf")

    def test_an_interrupt_wakes_a_watcher_and_marks_its_watch(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        queue = topology.queue()
        woken = threading.Event()
        watch = _watch_or_skip(backend, queue, woken.set)
        try:
            backend.interrupt()
            assert woken.wait(RECEIVE_TIMEOUT), "an interrupt did not wake the watcher"
            assert watch.interrupted
        finally:
            watch.cancel()

    def test_topic_publisher_reaches_a_dispatcher(
        self, backend: MessagingBackend, topology: Topology
    ) -> None:
        if not backend.capabilities.topics:
            pytest.skip("backend has no topics")
        topic = topology.topic()
        queue = topology.queue(topic)
        received: list[Any] = []
        dispatcher = MessageDispatcher(
            JsonSerializer(), backend=backend, consumers=[Consumer(on_message=received.append)]
        )
        TopicPublisher(JsonSerializer(), backend).publish(topic, {"id": 7})
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while not received and time.monotonic() < deadline:
            dispatcher.consume_event(queue.name, wait_seconds=1)
        assert received == [{"id": 7}]


__all__ = [
    "RECEIVE_TIMEOUT",
    "BackendConformance",
    "Topology",
    "assert_empty",
    "make_message",
    "receive",
    "unique_name",
]
