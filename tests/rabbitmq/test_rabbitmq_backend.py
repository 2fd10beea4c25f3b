"""Behaviour of the RabbitMQ backend on the real broker, beyond the conformance suite."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

import melange.backends
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq.topology import (
    DEAD_LETTER_EXCHANGE,
    delay_bucket_ms,
    retry_queue_name,
)
from melange.consumers import Consumer
from melange.dispatch import Middleware
from melange.exceptions import (
    BackendConnectionError,
    BatchPublishError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_ATTEMPTS, FAILURE_QUEUE, FAILURE_REASON, Message, QueueWrapper
from melange.policy import FailurePolicy
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import Topology, make_message, receive, unique_name

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def raw_channel(rabbit_address: tuple[str, int]) -> Iterator[Any]:
    """A plain pika channel, to look at what the backend put on the broker."""
    host, port = rabbit_address
    connection = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    yield connection.channel()
    connection.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def drain(backend: RabbitMQBackend, queue: QueueWrapper, count: int) -> list[str]:
    """Receive and acknowledge until ``count`` messages arrived (or 30 s passed)."""
    contents: list[str] = []
    deadline = time.monotonic() + 30
    while len(contents) < count and time.monotonic() < deadline:
        batch = backend.retrieve_messages(queue, max_messages=50, wait_seconds=1)
        backend.acknowledge_batch(batch)
        contents.extend(m.content for m in batch)
    return contents


# -- connecting ------------------------------------------------------------------------------


def test_is_reachable_from_the_lazy_backends_namespace() -> None:
    assert melange.backends.RabbitMQBackend is RabbitMQBackend


def test_connects_from_an_amqp_url(rabbit_address: tuple[str, int], topology: Topology) -> None:
    host, port = rabbit_address
    backend = RabbitMQBackend(url=f"amqp://guest:guest@{host}:{port}/%2F")
    try:
        queue = topology.queue()
        backend.publish_to_queue(make_message('"via url"'), backend.get_queue(queue.name))
        [got] = receive(backend, queue, 1)
        assert got.content == '"via url"'
        backend.acknowledge(got)
    finally:
        backend.close_connection()


def test_wrong_password_fails_fast_naming_host_port_and_vhost(
    rabbit_address: tuple[str, int],
) -> None:
    host, port = rabbit_address
    started = time.monotonic()
    with pytest.raises(BackendConnectionError) as caught:
        RabbitMQBackend(host=host, port=port, username="guest", password="wrong-password")
    assert time.monotonic() - started < 20
    text = str(caught.value)
    assert f"{host}:{port}" in text
    assert "vhost '/'" in text
    assert "access refused" in text


def test_unknown_virtual_host_is_a_clear_connection_error(rabbit_address: tuple[str, int]) -> None:
    host, port = rabbit_address
    with pytest.raises(BackendConnectionError, match="vhost 'no-such-vhost'"):
        RabbitMQBackend(host=host, port=port, virtual_host="no-such-vhost")


def test_unreachable_broker_fails_within_a_bounded_time() -> None:
    started = time.monotonic()
    with pytest.raises(BackendConnectionError, match=r"127\.0\.0\.1:1, vhost '/'"):
        RabbitMQBackend(host="127.0.0.1", port=1, connection_attempts=2, retry_delay=0.2)
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://localhost"}, "amqp://"),
        ({"url": "amqp://localhost", "host": "localhost"}, "either url"),
        ({"heartbeat": 0}, "heartbeat"),
        ({"queue_type": "stream"}, "queue_type"),
        ({"prefetch_count": 0}, "prefetch_count"),
    ],
)
def test_bad_configuration_is_refused_before_connecting(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RabbitMQBackend(**kwargs)


# -- topology --------------------------------------------------------------------------------


def test_declare_and_delete_are_idempotent(rabbit: RabbitMQBackend) -> None:
    topic = rabbit.declare_topic(unique_name("t"))
    assert rabbit.declare_topic(topic.name) == topic
    name = unique_name("q")
    queue, _ = rabbit.declare_queue(name, topic)
    again, _ = rabbit.declare_queue(name, topic)
    assert again == queue
    rabbit.delete_queue(queue)
    rabbit.delete_queue(queue)
    rabbit.delete_topic(topic)
    rabbit.delete_topic(topic)
    with pytest.raises(QueueNotFoundError):
        rabbit.get_queue(name)
    with pytest.raises(TopicNotFoundError):
        rabbit.get_topic(topic.name)


def test_redeclaring_with_another_queue_type_names_the_argument(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    queue = topology.queue()  # quorum
    classic = make_rabbit(queue_type="classic")
    with pytest.raises(ConfigurationError, match="x-queue-type") as caught:
        classic.declare_queue(queue.name)
    assert queue.name in str(caught.value)
    # The refused declaration leaves the backend usable.
    classic.publish_to_queue(make_message('"still fine"'), classic.get_queue(queue.name))


def test_redeclaring_without_the_dead_letter_queue_names_the_argument(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue(dlq=True)
    with pytest.raises(ConfigurationError, match="x-dead-letter-exchange"):
        rabbit.declare_queue(queue.name)


def test_unknown_queue_options_and_fifo_are_refused(rabbit: RabbitMQBackend) -> None:
    with pytest.raises(ConfigurationError, match="visibilty_timeout"):
        rabbit.declare_queue(unique_name("q"), visibilty_timeout=3)
    with pytest.raises(ConfigurationError, match="FIFO"):
        rabbit.declare_queue(unique_name("q"), fifo=True)
    with pytest.raises(ConfigurationError, match="list of manifests"):
        rabbit.declare_queue(unique_name("q"), filter_events="OrderCreated")


def test_adding_a_filter_later_removes_the_catch_all_subscription(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    topic = topology.topic()
    queue = topology.queue(topic)
    rabbit.declare_queue(queue.name, rabbit.get_topic(topic), filter_events=["Wanted"])
    wrapper = rabbit.get_topic(topic)
    rabbit.publish_to_topic(make_message('"no"', manifest="Other"), wrapper)
    rabbit.publish_to_topic(make_message('"yes"', manifest="Wanted"), wrapper)
    [got] = receive(rabbit, queue, 1)
    assert got.content == '"yes"'
    rabbit.acknowledge(got)
    assert rabbit.retrieve_messages(queue, wait_seconds=1) == []


# -- publishing ------------------------------------------------------------------------------


def test_publish_returns_once_the_broker_holds_the_message(
    rabbit: RabbitMQBackend, topology: Topology, raw_channel: Any
) -> None:
    queue = topology.queue()
    for i in range(3):
        rabbit.publish_to_queue(make_message(str(i)), queue)
        assert raw_channel.queue_declare(queue.name, passive=True).method.message_count == i + 1


def test_message_travels_as_a_persistent_amqp_message_with_its_envelope(
    rabbit: RabbitMQBackend, topology: Topology, raw_channel: Any
) -> None:
    queue = topology.queue()
    sent = make_message('{"n": 1}', manifest="OrderCreated")
    sent.headers["causation_id"] = "cause-9"
    rabbit.publish_to_queue(sent, queue)
    method, properties, body = raw_channel.basic_get(queue.name, auto_ack=True)
    assert method is not None
    assert body == b'{"n": 1}'
    assert properties.delivery_mode == 2
    assert properties.message_id == sent.message_id
    assert properties.correlation_id == "corr-1"
    assert properties.headers["manifest"] == "OrderCreated"
    assert properties.headers["serializer_id"] == 1
    assert properties.headers["causation_id"] == "cause-9"
    assert properties.headers["published_at"] == sent.headers["published_at"]


def test_broker_refusal_raises_publish_error(rabbit: RabbitMQBackend, topology: Topology) -> None:
    # A full queue that rejects publishes makes the broker nack instead of confirming (a
    # classic queue enforces the length exactly).
    queue = topology.queue(
        queue_type="classic", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    rabbit.publish_to_queue(make_message('"fits"'), queue)
    with pytest.raises(PublishError, match="nacked"):
        rabbit.publish_to_queue(make_message('"refused"'), queue)


def test_batch_refusals_name_the_refused_messages(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue(
        queue_type="classic", arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    batch = [make_message(str(i)) for i in range(4)]
    with pytest.raises(BatchPublishError) as caught:
        rabbit.publish_batch_to_queue(batch, queue)
    assert sorted(caught.value.failures) == [2, 3]
    got = receive(rabbit, queue, 2)
    assert sorted(m.content for m in got) == ["0", "1"]
    rabbit.acknowledge_batch(got)


def test_publishing_to_a_missing_queue_raises_instead_of_dropping(
    rabbit: RabbitMQBackend,
) -> None:
    missing = QueueWrapper(unique_name("gone"))
    with pytest.raises(QueueNotFoundError, match=missing.name):
        rabbit.publish_to_queue(make_message('"lost?"'), missing)
    with pytest.raises(QueueNotFoundError):
        rabbit.publish_batch_to_queue([make_message("1"), make_message("2")], missing)


def test_topic_without_subscribers_accepts_the_publish(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    topic = rabbit.get_topic(topology.topic())
    rabbit.publish_to_topic(make_message('"nobody listens yet"'), topic)


def test_topic_without_subscribers_raises_when_subscribers_are_required(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    strict = make_rabbit(require_topic_subscribers=True)
    topic_name = topology.topic()
    topic = strict.get_topic(topic_name)
    with pytest.raises(PublishError, match=f"no queue subscribed to topic '{topic_name}'"):
        strict.publish_to_topic(make_message('"x"', manifest="Ignored"), topic)
    queue = topology.queue(topic_name, filter_events=["Wanted"])
    with pytest.raises(PublishError, match="accepts manifest 'Ignored'"):
        strict.publish_to_topic(make_message('"x"', manifest="Ignored"), topic)
    strict.publish_to_topic(make_message('"y"', manifest="Wanted"), topic)
    [got] = receive(strict, queue, 1)
    strict.acknowledge(got)


def test_publishing_to_a_deleted_topic_raises_topic_not_found(rabbit: RabbitMQBackend) -> None:
    topic = rabbit.declare_topic(unique_name("t"))
    rabbit.delete_topic(topic)
    with pytest.raises(TopicNotFoundError, match=topic.name):
        rabbit.publish_to_topic(make_message('"x"'), topic)
    # The channel error did not break the backend.
    again = rabbit.declare_topic(topic.name)
    rabbit.publish_to_topic(make_message('"y"'), again)
    rabbit.delete_topic(again)


def test_publishing_is_safe_from_many_threads(rabbit: RabbitMQBackend, topology: Topology) -> None:
    queue = topology.queue()
    errors: list[BaseException] = []

    def publish(worker: int) -> None:
        try:
            for i in range(25):
                rabbit.publish_to_queue(make_message(f"{worker}-{i}"), queue)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    got = drain(rabbit, queue, 150)
    assert sorted(got) == sorted(f"{w}-{i}" for w in range(6) for i in range(25))


# -- consuming, retries, dead letters --------------------------------------------------------


def test_delays_round_to_a_small_ladder() -> None:
    assert delay_bucket_ms(0.001) == 100
    assert delay_bucket_ms(0.95) == 1_000
    assert delay_bucket_ms(1.1) == 1_000
    assert delay_bucket_ms(2.0) == 2_000
    assert delay_bucket_ms(4.4) == 5_000
    assert delay_bucket_ms(300) == 300_000
    assert delay_bucket_ms(5000) == 7_200_000
    assert retry_queue_name("orders", 2000) == "orders.melange-retry-2000ms"


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_attempt_counts_across_delayed_retries_until_the_policy_dead_letters(
    make_rabbit: Callable[..., RabbitMQBackend], queue_type: str, raw_channel: Any
) -> None:
    backend = make_rabbit(queue_type=queue_type)
    topology = Topology(backend)
    try:
        queue = topology.queue(dlq=True, max_receive_count=10)
        dlq = topology.dead_letter_queue_of(queue)
        attempts: list[int | None] = []

        class Attempts(Middleware):
            def message_received(self, message: Message, queue: str) -> None:
                attempts.append(message.attempt)

        def fail(_payload: Any) -> None:
            raise RuntimeError("always fails")

        policy = FailurePolicy(max_attempts=4, initial_delay=0.1, backoff_factor=1.0, jitter=0)
        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Consumer(on_message=fail)],
            failure_policy=policy,
            middleware=[Attempts()],
        )
        backend.publish_to_queue(make_message('{"x": 1}'), queue)
        deadline = time.monotonic() + 30
        while dispatcher.stats.dead_lettered < 1 and time.monotonic() < deadline:
            dispatcher.consume_event(queue.name, wait_seconds=1)
        assert attempts == [1, 2, 3, 4]
        [dead] = receive(backend, dlq, 1)
        assert dead.headers[FAILURE_ATTEMPTS] == "4"
        assert "always fails" in dead.headers[FAILURE_REASON]
        backend.acknowledge(dead)
        # The delayed copies went through a retry queue that sends them back...
        retry = retry_queue_name(queue.name, 100)
        assert raw_channel.queue_declare(retry, passive=True).method.message_count == 0
        # ... and that is deleted with its queue.
        backend.delete_queue(queue)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            raw_channel.queue_declare(retry, passive=True)
    finally:
        topology.cleanup()
        backend.close_connection()


def test_dead_letter_queue_is_found_by_a_backend_that_did_not_declare_it(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    queue = topology.queue(dlq=True)
    dlq = topology.dead_letter_queue_of(queue)
    other = make_rabbit()
    handle = other.get_queue(queue.name)
    other.publish_to_queue(make_message('"bad"'), handle)
    [got] = receive(other, handle, 1)
    assert other.dead_letter(got, {FAILURE_REASON: "elsewhere"}) is True
    [dead] = receive(other, other.get_queue(dlq.name), 1)
    assert dead.headers[FAILURE_REASON] == "elsewhere"
    other.acknowledge(dead)


def test_undecodable_messages_are_dead_lettered_with_the_reason(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue(dlq=True)
    dlq = topology.dead_letter_queue_of(queue)
    handled: list[Any] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=rabbit, consumers=[Consumer(on_message=handled.append)]
    )
    rabbit.publish_to_queue(Message(None, '{"broken": ', serializer_id=1, manifest="json"), queue)
    rabbit.publish_to_queue(Message(None, '{"ok": 1}', serializer_id=99, manifest="json"), queue)
    deadline = time.monotonic() + 20
    while dispatcher.stats.dead_lettered < 2 and time.monotonic() < deadline:
        dispatcher.consume_event(queue.name, wait_seconds=1)
    assert handled == []
    assert dispatcher.stats.poison == 2
    dead = receive(rabbit, dlq, 2)
    by_body = {m.content: m for m in dead}
    assert set(by_body) == {'{"broken": ', '{"ok": 1}'}
    assert by_body['{"broken": '].headers[FAILURE_REASON].startswith("undecodable message")
    assert "serializer id 99" in by_body['{"ok": 1}'].headers[FAILURE_REASON]
    assert by_body['{"ok": 1}'].serializer_id == 99
    rabbit.acknowledge_batch(dead)
    assert rabbit.retrieve_messages(queue, wait_seconds=1) == []


def test_consume_loop_with_four_workers_settles_every_message(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue(dlq=True)
    total = 200
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    def handle(payload: dict[str, int]) -> None:
        with lock:
            seen[payload["n"]] += 1
            first = seen[payload["n"]] == 1
        if first and payload["n"] % 5 == 0:
            raise RuntimeError("fails once")  # retried: nack from a worker thread

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=rabbit,
        consumers=[Consumer(on_message=handle)],
        failure_policy=FailurePolicy.no_delay(max_attempts=3),
    )
    messages = [
        Message.create(f'{{"n": {n}}}', "json", 1, {"correlation_id": str(n)}) for n in range(total)
    ]
    rabbit.publish_batch_to_queue(messages, queue)
    loop = threading.Thread(
        target=dispatcher.consume_loop,
        args=(queue.name,),
        kwargs={"workers": 4, "install_signal_handlers": False},
    )
    loop.start()
    try:
        wait_until(lambda: dispatcher.stats.acknowledged >= total, 60, "every message to be acked")
    finally:
        dispatcher.stop()
        loop.join(30)
    assert not loop.is_alive()
    assert sorted(seen) == list(range(total))
    assert dispatcher.stats.retried == total // 5
    assert dispatcher.stats.dead_lettered == 0
    assert rabbit.retrieve_messages(queue, wait_seconds=1) == []


def test_heartbeats_are_answered_while_a_handler_runs_long(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    backend = make_rabbit(heartbeat=1)
    queue = topology.queue()
    backend.publish_to_queue(make_message('"slow"'), queue)
    [got] = receive(backend, queue, 1)
    time.sleep(4)  # the handler: far longer than two heartbeat intervals
    backend.acknowledge(got)
    assert backend._link.generation == 1, "the connection was dropped while the handler ran"
    assert backend.retrieve_messages(queue, wait_seconds=1) == []


def test_interrupt_wakes_a_blocked_receive(rabbit: RabbitMQBackend, topology: Topology) -> None:
    queue = topology.queue()
    result: list[list[Message]] = []
    thread = threading.Thread(
        target=lambda: result.append(rabbit.retrieve_messages(queue, wait_seconds=30))
    )
    started = time.monotonic()
    thread.start()
    # Repeated, because the receive may not be blocked yet when the first interrupt comes.
    while thread.is_alive() and time.monotonic() - started < 10:
        rabbit.interrupt()
        thread.join(0.2)
    assert result == [[]]
    assert time.monotonic() - started < 10


def test_closing_gives_unsettled_messages_back(
    make_rabbit: Callable[..., RabbitMQBackend], rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue()
    first = make_rabbit()
    rabbit.publish_batch_to_queue([make_message(str(i)) for i in range(3)], queue)
    held = receive(first, queue, 3)
    assert len(held) == 3
    first.close_connection()
    back = receive(rabbit, queue, 3)
    assert sorted(m.content for m in back) == ["0", "1", "2"]
    # Returned unprocessed: no attempt was used up.
    assert all(m.attempt == 1 for m in back)
    rabbit.acknowledge_batch(back)


def test_consuming_a_deleted_queue_raises_queue_not_found(
    rabbit: RabbitMQBackend,
) -> None:
    name = f"q-{uuid.uuid4().hex[:12]}"
    queue, _ = rabbit.declare_queue(name)
    assert rabbit.retrieve_messages(queue, wait_seconds=0) == []
    rabbit.delete_queue(queue)
    with pytest.raises(QueueNotFoundError):
        rabbit.retrieve_messages(queue, wait_seconds=0)


def test_dead_letter_exchange_is_shared_and_durable(
    rabbit: RabbitMQBackend, topology: Topology, raw_channel: Any
) -> None:
    topology.queue(dlq=True)
    raw_channel.exchange_declare(DEAD_LETTER_EXCHANGE, passive=True)


def test_an_idle_consumer_hands_its_buffered_messages_to_other_consumers(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    queue = topology.queue()
    first = make_rabbit(consumer_idle_timeout=1.0)
    first.publish_batch_to_queue([make_message(str(i)) for i in range(3)], queue)
    # One message handed out and settled; the other two only sit in first's buffer.
    [taken] = receive(first, queue, 1, max_messages=1)
    first.acknowledge(taken)
    second = make_rabbit()
    rest = receive(second, queue, 2, timeout=20)
    assert sorted(m.content for m in rest) == sorted({"0", "1", "2"} - {taken.content})
    second.acknowledge_batch(rest)


def test_an_idle_consumer_keeps_messages_that_are_being_processed(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    queue = topology.queue()
    first = make_rabbit(consumer_idle_timeout=0.5)
    first.publish_to_queue(make_message('"in hand"'), queue)
    [held] = receive(first, queue, 1)
    time.sleep(2)  # several idle checks pass while the message is processed
    first.acknowledge(held)
    assert first._link.generation == 1
    second = make_rabbit()
    assert second.retrieve_messages(second.get_queue(queue.name), wait_seconds=1) == []


def test_messages_dead_lettered_by_the_broker_say_why(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue(dlq=True, max_receive_count=2)
    dlq = topology.dead_letter_queue_of(queue)
    rabbit.publish_to_queue(make_message('"poison"'), queue)
    # Delivered twice without a verdict (as to consumers that crash): the backstop acts.
    for _ in range(2):
        [got] = receive(rabbit, queue, 1)
        assert got.attempt == 1
        rabbit.release(got)
    [dead] = receive(rabbit, dlq, 1)
    assert dead.headers[FAILURE_REASON] == "dead-lettered by RabbitMQ: delivery_limit"
    assert dead.headers[FAILURE_QUEUE] == queue.name
    assert dead.content == '"poison"'
    rabbit.acknowledge(dead)


def test_an_existing_classic_queue_is_used_as_it_is(
    rabbit: RabbitMQBackend, raw_channel: Any
) -> None:
    name = unique_name("legacy")
    raw_channel.queue_declare(name, durable=True)  # what most tools create: a classic queue
    try:
        queue, _ = rabbit.declare_queue(name)
        rabbit.publish_to_queue(make_message('"old queue"'), queue)
        [first] = receive(rabbit, queue, 1)
        rabbit.nack(first)
        [second] = receive(rabbit, queue, 1)
        assert (first.attempt, second.attempt) == (1, 2)
        rabbit.acknowledge(second)
    finally:
        raw_channel.queue_delete(name)


def test_asking_for_quorum_on_an_existing_classic_queue_is_refused_with_a_hint(
    make_rabbit: Callable[..., RabbitMQBackend], raw_channel: Any
) -> None:
    name = unique_name("legacy")
    raw_channel.queue_declare(name, durable=True)
    try:
        strict = make_rabbit(queue_type="quorum")
        with pytest.raises(ConfigurationError, match="x-queue-type") as caught:
            strict.declare_queue(name)
        assert "leave queue_type unset" in str(caught.value)
    finally:
        raw_channel.queue_delete(name)


def test_a_publish_the_broker_refuses_outright_raises_publish_error(
    rabbit: RabbitMQBackend, raw_channel: Any
) -> None:
    # An internal exchange accepts no publishes: the broker closes the channel (403).
    name = unique_name("internal")
    raw_channel.exchange_declare(name, "headers", durable=False, internal=True)
    try:
        topic = rabbit.get_topic(name)
        with pytest.raises(PublishError, match="403"):
            rabbit.publish_to_topic(make_message('"x"'), topic)
        # The backend reopens its publishing channel for the next publish.
        queue, _ = rabbit.declare_queue(unique_name("q"))
        rabbit.publish_to_queue(make_message('"after"'), queue)
        [got] = receive(rabbit, queue, 1)
        rabbit.acknowledge(got)
        rabbit.delete_queue(queue)
    finally:
        raw_channel.exchange_delete(name)


# -- the receive and acknowledge path ---------------------------------------------------------


def test_acknowledgements_still_pending_when_the_backend_closes_are_sent(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    queue = topology.queue()
    first = make_rabbit()
    first.publish_batch_to_queue([make_message(str(i)) for i in range(20)], queue)
    got = receive(first, queue, 20)
    assert len(got) == 20
    # acknowledge returns before the I/O thread sends the frames; closing must not lose them.
    for message in got:
        first.acknowledge(message)
    first.close_connection()
    second = make_rabbit()
    assert second.retrieve_messages(second.get_queue(queue.name), wait_seconds=1) == []


def test_acknowledging_part_of_the_outstanding_messages_leaves_the_rest_unsettled(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    # A batch covering every tag up to its highest is one "multiple" ack: one that skips a
    # tag must not settle the skipped message with it.
    queue = topology.queue()
    first = make_rabbit()
    first.publish_batch_to_queue([make_message(str(i)) for i in range(6)], queue)
    got = receive(first, queue, 6)
    assert len(got) == 6
    kept = got[2]
    first.acknowledge_batch(got[:2] + got[3:])
    first.close_connection()  # the unsettled message goes back to the queue
    second = make_rabbit()
    [again] = receive(second, second.get_queue(queue.name), 1)
    assert again.content == kept.content
    second.acknowledge(again)
    assert second.retrieve_messages(second.get_queue(queue.name), wait_seconds=1) == []


def test_a_burst_of_buffered_messages_is_handed_out_by_one_receive(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    queue = topology.queue()
    rabbit.retrieve_messages(queue, wait_seconds=0)  # starts consuming
    rabbit.publish_batch_to_queue([make_message(str(i)) for i in range(10)], queue)
    wait_until(
        lambda: len(rabbit._buffers.get(queue.name, ())) == 10, 30, "the burst to be buffered"
    )
    got = rabbit.retrieve_messages(queue, max_messages=10, wait_seconds=1)
    assert sorted(m.content for m in got) == [str(i) for i in range(10)]
    rabbit.acknowledge_batch(got)


def test_receiving_from_a_consumed_queue_does_not_wait_for_the_io_thread(
    rabbit: RabbitMQBackend, topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = topology.queue()
    rabbit.publish_to_queue(make_message('"one"'), queue)
    [first] = receive(rabbit, queue, 1)
    rabbit.acknowledge(first)
    calls: list[object] = []
    original = rabbit._link.call

    def counting_call(fn: Any, timeout: float) -> Any:
        calls.append(fn)
        return original(fn, timeout)

    monkeypatch.setattr(rabbit._link, "call", counting_call)
    rabbit.publish_to_queue(make_message('"two"'), queue)
    publishes = len(calls)
    [second] = receive(rabbit, queue, 1)
    assert second.content == '"two"'
    assert len(calls) == publishes, "a receive on a consumed queue went to the I/O thread"
    rabbit.acknowledge(second)


def test_a_receive_meeting_the_io_thread_mid_round_reads_the_next_delivery_itself(
    rabbit: RabbitMQBackend,
    make_rabbit: Callable[..., RabbitMQBackend],
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import melange.backends.rabbitmq.io_thread as module

    # While callers drive the connection the I/O thread looks at the socket only this often:
    # a receive left waiting for it to hand a delivery over would wait that long.
    monkeypatch.setattr(module, "PASSIVE_POLL", 5.0)
    # The receive waits this long at most for the round below to end (it lasts 0.3 s).
    monkeypatch.setattr(module, "ROUND_WAIT", 2.0, raising=False)
    queue = topology.queue()
    consumer = make_rabbit()
    consumer.retrieve_messages(queue, wait_seconds=0)  # starts consuming
    in_round = threading.Event()

    def hold_the_connection(_session: Any) -> None:
        in_round.set()
        time.sleep(0.3)

    # Queued, so that the I/O thread itself runs it (a call would run on this thread).
    consumer._link._enqueue(module._Op(hold_the_connection, waited=False))
    assert in_round.wait(5)
    got: list[Message] = []
    receiver = threading.Thread(
        target=lambda: got.extend(consumer.retrieve_messages(queue, wait_seconds=10))
    )
    receiver.start()
    time.sleep(0.6)  # the round is over, and nothing had arrived in it
    rabbit.publish_to_queue(make_message('"late"'), queue)
    published = time.monotonic()
    receiver.join(10)
    waited = time.monotonic() - published
    assert [m.content for m in got] == ['"late"']
    assert waited < 2.5, f"the delivery waited {waited:.1f}s for the I/O thread"
    consumer.acknowledge_batch(got)


def test_interrupt_ends_a_receive_while_the_io_thread_is_busy_for_long(
    make_rabbit: Callable[..., RabbitMQBackend], topology: Topology
) -> None:
    import melange.backends.rabbitmq.io_thread as module

    queue = topology.queue()
    consumer = make_rabbit()
    consumer.retrieve_messages(queue, wait_seconds=0)  # starts consuming
    in_round = threading.Event()
    consumer._link._enqueue(
        module._Op(lambda _session: (in_round.set(), time.sleep(3)), waited=False)
    )
    assert in_round.wait(5)
    result: list[list[Message]] = []
    receiver = threading.Thread(
        target=lambda: result.append(consumer.retrieve_messages(queue, wait_seconds=30))
    )
    receiver.start()
    time.sleep(0.3)  # waiting, while the I/O thread holds the connection
    interrupted = time.monotonic()
    consumer.interrupt()
    receiver.join(5)
    assert result == [[]]
    assert time.monotonic() - interrupted < 1.5


def test_a_batch_larger_than_the_socket_buffer_arrives_whole_and_in_order(
    rabbit: RabbitMQBackend, topology: Topology
) -> None:
    # Its frames are written together: the socket takes part of them at once, the I/O loop
    # the rest as the broker reads.
    queue = topology.queue()
    bodies = [f'"{index:04d}{"x" * 60_000}"' for index in range(200)]
    rabbit.publish_batch_to_queue([make_message(body) for body in bodies], queue)
    assert drain(rabbit, queue, len(bodies)) == bodies


def test_confirms_are_awaited_through_public_pika_calls_when_its_internals_are_missing(
    rabbit: RabbitMQBackend, topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    import melange.backends.rabbitmq.session as module

    monkeypatch.setattr(module, "_IoloopTimerContext", None)
    queue = topology.queue()
    rabbit.publish_to_queue(make_message('"one"'), queue)
    rabbit.publish_batch_to_queue([make_message(f'"{i}"') for i in range(20)], queue)
    got = receive(rabbit, queue, 21)
    assert len(got) == 21
    rabbit.acknowledge_batch(got)
