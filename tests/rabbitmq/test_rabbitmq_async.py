"""The asyncio RabbitMQ backend on the real broker, beyond the conformance suite.

Queues are declared with the pika backend (``topology``), so every test also checks that the
two backends agree on the topology they share.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from melange.backends.async_interfaces import as_async
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq.async_backend import AsyncRabbitMQBackend
from melange.backends.rabbitmq.topology import retry_queue_name
from melange.exceptions import (
    BackendConnectionError,
    BatchPublishError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
)
from melange.models import FAILURE_REASON, Message, QueueWrapper
from melange.testing.conformance import Topology, assert_empty, make_message, receive

pytestmark = pytest.mark.rabbitmq

T = TypeVar("T")


@pytest.fixture
def make_async(
    rabbit_address: tuple[str, int], connection_name: str
) -> Callable[..., AsyncRabbitMQBackend]:
    """Builds asyncio backends on the broker; each test's loop closes them (see ``run``)."""
    host, port = rabbit_address

    def make(**kwargs: object) -> AsyncRabbitMQBackend:
        kwargs.setdefault("connection_name", connection_name)
        return AsyncRabbitMQBackend(host=host, port=port, **kwargs)  # type: ignore[arg-type]

    return make


def run(backend: AsyncRabbitMQBackend, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario`` on a new event loop, closing ``backend`` on that loop afterwards."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await backend.aclose()

    return asyncio.run(main())


async def receive_async(
    backend: AsyncRabbitMQBackend, queue: QueueWrapper, count: int, timeout: float = 15.0
) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(
            await backend.retrieve_messages(queue, max_messages=count - len(got), wait_seconds=1)
        )
    return got


def rich_message(content: str) -> Message:
    message = make_message(content, manifest="OrderPlaced")
    message.headers["tenant"] = "acme"
    return message  # no group id: the RabbitMQ backends refuse FIFO publishes


def assert_same_envelope(sent: Message, got: Message) -> None:
    assert got.message_id == sent.message_id
    assert got.content == sent.content
    assert got.manifest == sent.manifest
    assert got.serializer_id == sent.serializer_id
    assert got.group_id == sent.group_id
    assert got.headers == sent.headers
    assert got.attempt == 1


def test_the_backend_is_named_and_claims_what_the_pika_backend_claims(
    rabbit: RabbitMQBackend, make_async: Callable[..., AsyncRabbitMQBackend]
) -> None:
    backend = make_async()
    assert AsyncRabbitMQBackend.name == "rabbitmq"
    assert as_async(backend) is backend
    assert backend.capabilities == rabbit.capabilities
    assert make_async(queue_type="classic").capabilities.native_dead_letter is False


def test_messages_published_with_pika_are_received_by_the_async_backend(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    queue = topology.queue()
    sent = [rich_message('{"total": "12€"}'), rich_message('"second"')]
    rabbit.publish_batch_to_queue(sent, queue)
    backend = make_async()

    async def scenario() -> list[Message]:
        got = await receive_async(backend, queue, 2)
        await backend.acknowledge_batch(got)
        return got

    got = run(backend, scenario)
    assert len(got) == 2
    for message, received in zip(
        sent,
        sorted(
            got, key=lambda m: sent.index(next(s for s in sent if s.message_id == m.message_id))
        ),
        strict=True,
    ):
        assert_same_envelope(message, received)


def test_messages_published_by_the_async_backend_are_received_with_pika(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    topic = topology.topic()
    queue = topology.queue(topic, filter_events=["OrderPlaced"])
    sent = rich_message('{"total": "12€"}')
    ignored = make_message('"not for this queue"', manifest="OrderCancelled")
    backend = make_async()

    async def scenario() -> None:
        topic_wrapper = await backend.get_topic(topic)
        await backend.publish_batch_to_topic([ignored, sent], topic_wrapper)

    run(backend, scenario)
    got = receive(rabbit, queue, 2, timeout=3)
    assert len(got) == 1
    assert_same_envelope(sent, got[0])
    rabbit.acknowledge_batch(got)


def test_a_failed_attempt_comes_back_after_its_delay_with_the_attempt_counted(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    queue = topology.queue()
    rabbit.publish_to_queue(make_message('"retry me"'), queue)
    backend = make_async()

    async def scenario() -> list[tuple[int, float]]:
        seen: list[tuple[int, float]] = []
        for _ in range(2):
            [message] = await receive_async(backend, queue, 1)
            seen.append((message.attempt, time.monotonic()))
            await backend.nack(message, delay=0.5)
        [message] = await receive_async(backend, queue, 1)
        seen.append((message.attempt, time.monotonic()))
        await backend.acknowledge(message)
        return seen

    seen = run(backend, scenario)
    assert [attempt for attempt, _ in seen] == [1, 2, 3]
    assert seen[1][1] - seen[0][1] >= 0.4, "the retry did not wait for its delay"
    assert rabbit.get_queue(retry_queue_name(queue.name, 500))  # the ladder's step, shared


def test_a_pika_retry_is_counted_by_the_async_backend(
    make_rabbit: Callable[..., RabbitMQBackend],
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    queue = topology.queue()
    pika_consumer = make_rabbit()
    pika_consumer.publish_to_queue(make_message('"retry me"'), queue)
    [message] = receive(pika_consumer, queue, 1)
    pika_consumer.nack(message, delay=0.1)
    pika_consumer.close_connection()  # so that the retried copy goes to the async backend
    backend = make_async()

    async def scenario() -> int:
        [again] = await receive_async(backend, queue, 1)
        await backend.acknowledge(again)
        return again.attempt

    assert run(backend, scenario) == 2


def test_release_gives_a_message_back_without_counting_an_attempt(
    topology: Topology, make_async: Callable[..., AsyncRabbitMQBackend]
) -> None:
    queue = topology.queue()
    backend = make_async()

    async def scenario() -> list[int]:
        await backend.publish_to_queue(make_message('"later"'), queue)
        attempts = []
        [message] = await receive_async(backend, queue, 1)
        attempts.append(message.attempt)
        await backend.release(message)
        [message] = await receive_async(backend, queue, 1)
        attempts.append(message.attempt)
        await backend.release(message, delay=0.2)
        [message] = await receive_async(backend, queue, 1)
        attempts.append(message.attempt)
        await backend.nack(message)
        [message] = await receive_async(backend, queue, 1)
        attempts.append(message.attempt)
        await backend.acknowledge(message)
        return attempts

    assert run(backend, scenario) == [1, 1, 1, 2]


def test_holds_is_false_once_the_connection_is_lost_and_the_next_call_reconnects(
    topology: Topology, make_async: Callable[..., AsyncRabbitMQBackend]
) -> None:
    queue = topology.queue()
    backend = make_async()

    async def scenario() -> None:
        await backend.publish_to_queue(make_message('"held"'), queue)
        [message] = await receive_async(backend, queue, 1)
        assert backend.holds(message)
        session = backend._session
        assert session is not None
        await session.close()  # the connection is lost under the backend
        assert not backend.holds(message)
        assert not backend.connected
        await backend.acknowledge(message)  # a no-op: the broker delivers it again
        [again] = await receive_async(backend, queue, 1)
        assert again.message_id == message.message_id
        assert again.attempt == 1, "a lost connection is not a failed attempt"
        assert backend.holds(again)
        await backend.acknowledge(again)
        assert await backend.retrieve_messages(queue, wait_seconds=0.5) == []

    run(backend, scenario)


def test_dead_letter_carries_the_failure_headers(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    queue = topology.queue(dlq=True)
    dlq = topology.dead_letter_queue_of(queue)
    rabbit.publish_to_queue(rich_message('"poison"'), queue)
    backend = make_async()

    async def scenario() -> bool:
        [message] = await receive_async(backend, queue, 1)
        return await backend.dead_letter(
            message, {FAILURE_REASON: "ValueError: boom", "melange_failure_attempts": "3"}
        )

    assert run(backend, scenario) is True
    [dead] = receive(rabbit, dlq, 1)
    assert dead.content == '"poison"'
    assert dead.manifest == "OrderPlaced"
    assert dead.headers[FAILURE_REASON] == "ValueError: boom"
    assert dead.headers["melange_failure_attempts"] == "3"
    assert dead.headers["tenant"] == "acme"
    rabbit.acknowledge(dead)


def test_dead_letter_without_a_dead_letter_queue_returns_false(
    topology: Topology, make_async: Callable[..., AsyncRabbitMQBackend]
) -> None:
    queue = topology.queue()
    backend = make_async()

    async def scenario() -> bool:
        await backend.publish_to_queue(make_message('"x"'), queue)
        [message] = await receive_async(backend, queue, 1)
        result = await backend.dead_letter(message, {FAILURE_REASON: "boom"})
        await backend.acknowledge(message)
        return result

    assert run(backend, scenario) is False


def test_interrupt_from_another_thread_wakes_a_waiting_receive(
    topology: Topology, make_async: Callable[..., AsyncRabbitMQBackend]
) -> None:
    queue = topology.queue()
    backend = make_async()

    async def scenario() -> tuple[list[Message], float]:
        await backend.retrieve_messages(queue)  # consuming, so only the wait remains
        timer = threading.Timer(0.3, backend.interrupt)
        started = time.monotonic()
        timer.start()
        got = await backend.retrieve_messages(queue, wait_seconds=20)
        return got, time.monotonic() - started

    got, waited = run(backend, scenario)
    assert got == []
    assert waited < 5


def test_missing_queue_and_incompatible_redeclaration_are_reported(
    topology: Topology, make_async: Callable[..., AsyncRabbitMQBackend]
) -> None:
    queue = topology.queue(queue_type="quorum")
    backend = make_async()

    async def scenario() -> None:
        with pytest.raises(QueueNotFoundError):
            await backend.retrieve_messages(QueueWrapper("no-such-queue-x1", "no-such-queue-x1"))
        with pytest.raises(ConfigurationError, match="x-queue-type"):
            await backend.declare_queue(queue.name, queue_type="classic")
        # The channel the broker closed is replaced: the backend keeps working.
        await backend.publish_to_queue(make_message('"still fine"'), queue)
        [message] = await receive_async(backend, queue, 1)
        await backend.acknowledge(message)

    run(backend, scenario)


def test_credentials_never_appear_in_errors_or_repr(
    rabbit_address: tuple[str, int],
) -> None:
    host, port = rabbit_address
    secret = "s3cr3t-pa55"
    backend = AsyncRabbitMQBackend(
        f"amqp://guest:{secret}@{host}:{port}/%2F", connection_attempts=1
    )
    assert secret not in repr(backend)

    async def scenario() -> None:
        with pytest.raises(BackendConnectionError) as caught:
            await backend.connect()
        text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
        assert secret not in text
        assert f"{host}:{port}" in text

    run(backend, scenario)


# -- what the transport (pika's asyncio connection) must get right ---------------------------


def via_proxy(proxy: Any, connection_name: str, **kwargs: Any) -> AsyncRabbitMQBackend:
    """A backend whose connections go through ``proxy``, to be cut like a failing network."""
    return AsyncRabbitMQBackend(
        host="127.0.0.1",
        port=proxy.port,
        connection_name=connection_name,
        heartbeat=2,
        reconnect_max_delay=0.5,
        **kwargs,
    )


async def until_disconnected(backend: AsyncRabbitMQBackend, timeout: float = 20.0) -> None:
    """Wait until the backend saw its connection fail (a relayed connection is reset once
    traffic or a missed heartbeat reaches the relay)."""
    deadline = time.monotonic() + timeout
    while backend.connected:
        assert time.monotonic() < deadline, "the cut connection was never noticed"
        await asyncio.sleep(0.05)


def test_a_connection_cut_mid_consume_loses_nothing(
    rabbit: RabbitMQBackend, topology: Topology, proxy: Any, connection_name: str
) -> None:
    queue = topology.queue()
    sent = [make_message(f'{{"n": {n}}}') for n in range(300)]
    rabbit.publish_batch_to_queue(sent, queue)
    prefetch = 20
    backend = via_proxy(proxy, connection_name, prefetch_count=prefetch)

    async def scenario() -> tuple[list[Message], list[Message]]:
        delivered: list[Message] = []
        in_hand: list[Message] = []
        deadline = time.monotonic() + 60
        while len(delivered) - len(in_hand) < 400 and time.monotonic() < deadline:
            got = await backend.retrieve_messages(queue, max_messages=10, wait_seconds=1)
            if not got and {m.message_id for m in delivered} >= {m.message_id for m in sent}:
                break  # everything came, and nothing more is coming
            if not in_hand and len(delivered) >= 100 and got:
                # The network fails with these messages in hand, and stays down a second.
                proxy.refusing.set()
                assert proxy.cut() >= 2
                threading.Timer(1.0, proxy.refusing.clear).start()
                await until_disconnected(backend)
                assert not any(backend.holds(m) for m in got)
                await backend.acknowledge_batch(got)  # a no-op: they are delivered again
                in_hand = got
                continue
            delivered.extend(got)
            await backend.acknowledge_batch(got)
        return delivered, in_hand

    delivered, in_hand = run(backend, scenario)
    assert in_hand, "the connection was never cut"
    ids = [m.message_id for m in delivered]
    assert set(ids) == {m.message_id for m in sent}, "messages were lost"
    # Only what the broker had out unacknowledged at the cut comes back: at most a prefetch.
    assert len(ids) - len(set(ids)) <= prefetch
    assert {m.message_id for m in in_hand} <= set(ids)
    assert all(m.attempt == 1 for m in delivered), "a lost connection is not a failed attempt"
    assert_empty(rabbit, queue)


def test_a_batch_publish_cut_while_waiting_for_confirms_lands_every_message(
    rabbit: RabbitMQBackend, topology: Topology, proxy: Any, connection_name: str
) -> None:
    queue = topology.queue()
    sent = [make_message(f'{{"n": {n}}}') for n in range(500)]
    backend = via_proxy(proxy, connection_name)

    async def scenario() -> None:
        await backend.get_queue(queue.name)  # connected: the cut below hits the publish
        publishing = asyncio.create_task(backend.publish_batch_to_queue(sent, queue))
        await asyncio.sleep(0.01)
        proxy.cut()
        await publishing  # repeated on a new connection where the confirms did not all come

    run(backend, scenario)
    expected = {m.message_id for m in sent}
    received: set[str] = set()
    deadline = time.monotonic() + 30
    while received != expected and time.monotonic() < deadline:
        got = rabbit.retrieve_messages(queue, max_messages=100, wait_seconds=1)
        received.update(m.message_id for m in got)  # duplicates: the repeated publish
        rabbit.acknowledge_batch(got)
    assert received == expected


def test_messages_nobody_routes_are_reported_by_their_place_in_the_batch(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    topic = topology.topic()
    queue = topology.queue(topic, filter_events=["OrderPlaced"])
    batch = [
        make_message(f'"{n}"', manifest="OrderPlaced" if n % 2 == 0 else "OrderCancelled")
        for n in range(6)
    ]
    backend = make_async(require_topic_subscribers=True)

    async def scenario() -> tuple[BatchPublishError, PublishError]:
        topic_wrapper = await backend.get_topic(topic)
        with pytest.raises(BatchPublishError) as batch_refused:
            await backend.publish_batch_to_topic(batch, topic_wrapper)
        with pytest.raises(PublishError) as single_refused:
            await backend.publish_to_topic(make_message('"x"', manifest="Other"), topic_wrapper)
        # Routed messages after the returned ones are still confirmed as delivered.
        await backend.publish_to_topic(
            make_message('"last"', manifest="OrderPlaced"), topic_wrapper
        )
        return batch_refused.value, single_refused.value

    refused_batch, refused_single = run(backend, scenario)
    assert sorted(refused_batch.failures) == [1, 3, 5]
    assert all("OrderCancelled" in reason for reason in refused_batch.failures.values())
    assert "'Other'" in str(refused_single)
    got = receive(rabbit, queue, 5, timeout=5)
    rabbit.acknowledge_batch(got)
    assert sorted(m.content for m in got) == ['"0"', '"2"', '"4"', '"last"']


def test_a_consumer_the_broker_cancels_ends_the_wait_and_the_queue_is_reported_missing(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    queue = topology.queue()
    backend = make_async()

    async def scenario() -> float:
        await backend.retrieve_messages(queue)  # consuming
        started = time.monotonic()
        waiting = asyncio.create_task(backend.retrieve_messages(queue, wait_seconds=20))
        await asyncio.to_thread(rabbit.delete_queue, queue)  # the broker cancels the consumer
        assert await waiting == []
        waited = time.monotonic() - started
        with pytest.raises(QueueNotFoundError):
            await backend.retrieve_messages(queue)
        return waited

    assert run(backend, scenario) < 10


def test_acknowledgements_reach_the_broker_before_aclose_closes(
    rabbit: RabbitMQBackend,
    topology: Topology,
    make_async: Callable[..., AsyncRabbitMQBackend],
) -> None:
    queue = topology.queue()
    rabbit.publish_batch_to_queue([make_message(f'"{n}"') for n in range(100)], queue)
    backend = make_async(prefetch_count=100)

    async def scenario() -> int:
        got = await receive_async(backend, queue, 100)
        await backend.acknowledge_batch(got)
        return len(got)  # run() closes the backend right away

    assert run(backend, scenario) == 100
    assert_empty(rabbit, queue)
