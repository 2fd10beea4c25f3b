"""What the kombu backend does beyond the conformance suite: its URLs, its capabilities per
transport, what it refuses, and the places where kombu's own behaviour had to be corrected
(topic copies given back to their own queue only, per-queue leases on Redis, messages held
for a delayed retry given back when the process closes)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from kombu_support import transport_url

from melange.backends.kombu import KombuBackend
from melange.backends.urls import backend_from_url
from melange.exceptions import ConfigurationError, PublishError, TopicNotFoundError
from melange.testing.conformance import make_message, receive


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


# -- URLs and capabilities (no broker needed to build a backend) -------------------------------


def test_kombu_urls_name_the_transport_and_take_the_backend_options() -> None:
    backend = backend_from_url("kombu+redis://127.0.0.1:6379/0?prefix=p:&visibility_timeout=7")
    assert isinstance(backend, KombuBackend)
    assert backend.capabilities.name == "kombu+redis"
    assert backend.visibility_timeout == 7.0
    amqp = backend_from_url("kombu+amqp://guest:secret@127.0.0.1:5672//?poll_interval=0.05")
    assert isinstance(amqp, KombuBackend)
    assert amqp.capabilities.name == "kombu+amqp"
    assert "secret" not in repr(amqp)


def test_an_unknown_url_option_is_a_configuration_error_naming_the_options() -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        backend_from_url("kombu+redis://127.0.0.1:6379/0?no_such_option=1")


def test_capabilities_say_what_each_transport_can_do() -> None:
    redis = KombuBackend("kombu+redis://127.0.0.1:6379/0").capabilities
    amqp = KombuBackend("kombu+amqp://guest:guest@127.0.0.1:5672//").capabilities
    memory = KombuBackend("kombu+memory://").capabilities
    for caps in (redis, amqp, memory):
        assert caps.delayed_delivery and caps.receive_count
        assert not (caps.fifo or caps.native_dead_letter or caps.delayed_publish)
    assert redis.visibility_timeout and redis.extend_visibility
    assert not (amqp.visibility_timeout or amqp.extend_visibility)
    assert redis.topics and amqp.topics and redis.filter_policies and amqp.filter_policies
    assert not memory.persistent and not memory.topics


# -- on the brokers --------------------------------------------------------------------------------


def test_fifo_queues_group_ids_and_publish_delays_are_refused(kombu_backend: KombuBackend) -> None:
    with pytest.raises(ConfigurationError, match="no FIFO queues"):
        kombu_backend.declare_queue(_name("q") + ".fifo")
    queue, _ = kombu_backend.declare_queue(_name("q"))
    try:
        with pytest.raises(ConfigurationError, match="message_group_id"):
            kombu_backend.publish_to_queue(make_message('"x"', group="g"), queue)
        with pytest.raises(ConfigurationError, match="delay"):
            kombu_backend.publish_to_queue(make_message('"x"'), queue, delay_seconds=5)
    finally:
        kombu_backend.delete_queue(queue)


def test_a_publish_by_the_same_backend_ends_a_waiting_receive_at_once(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    # With a long poll interval, a receive polling an empty queue (virtual transports) has
    # grown its pause past a second when the message is published: only the publish's wake
    # brings it back sooner.
    backend = make_kombu(poll_interval=5.0)
    queue, _ = backend.declare_queue(_name("q"))
    published: list[float] = []

    def publish_later() -> None:
        time.sleep(1.5)
        published.append(time.monotonic())
        backend.publish_to_queue(make_message('"x"'), queue)

    publisher = threading.Thread(target=publish_later)
    publisher.start()
    try:
        got = backend.retrieve_messages(queue, max_messages=1, wait_seconds=4.0)
        received = time.monotonic()
        publisher.join()
        assert [m.content for m in got] == ['"x"']
        assert received - published[0] < 0.5
        backend.acknowledge(got[0])
    finally:
        publisher.join()
        backend.delete_queue(queue)


def test_a_topic_copy_given_back_returns_to_its_own_queue_only(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    publisher = make_kombu()
    topic = publisher.declare_topic(_name("t"))
    first, _ = publisher.declare_queue(_name("q"), topic)
    second, _ = publisher.declare_queue(_name("q"), topic)
    try:
        publisher.publish_to_topic(make_message('"event"'), topic)
        consumer = make_kombu()
        [held] = receive(consumer, first, 1)
        consumer.close_connection()  # unsettled: given back
        [again] = receive(publisher, first, 1)
        assert again.message_id == held.message_id
        publisher.acknowledge(again)
        [other] = receive(publisher, second, 1)
        publisher.acknowledge(other)
        assert publisher.retrieve_messages(second, wait_seconds=1) == []
    finally:
        publisher.delete_queue(first)
        publisher.delete_queue(second)
        publisher.delete_topic(topic)


def test_a_message_held_for_a_delayed_retry_goes_back_when_the_backend_closes(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    owner = make_kombu()
    queue, _ = owner.declare_queue(_name("q"))
    try:
        owner.publish_to_queue(make_message('"retry me"'), queue)
        consumer = make_kombu()
        [got] = receive(consumer, queue, 1)
        consumer.nack(got, delay=60)
        assert owner.retrieve_messages(queue, wait_seconds=0.5) == []
        consumer.close_connection()
        [again] = receive(owner, queue, 1, timeout=10)
        assert again.message_id == got.message_id
        owner.acknowledge(again)
    finally:
        owner.delete_queue(queue)


def test_a_deleted_topic_is_not_found(make_kombu: Callable[..., KombuBackend]) -> None:
    backend = make_kombu()
    topic = backend.declare_topic(_name("t"))
    backend.delete_topic(topic)
    with pytest.raises(TopicNotFoundError):
        backend.get_topic(topic.name)


@pytest.mark.parametrize("transport", [pytest.param("redis", marks=pytest.mark.redis)])
def test_on_redis_a_queue_lease_ends_unsettled_messages_and_extending_it_holds_them(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    backend = make_kombu(visibility_timeout=30)
    queue, _ = backend.declare_queue(_name("q"), visibility_timeout=1)
    try:
        backend.publish_to_queue(make_message('"a"'), queue)
        backend.publish_to_queue(make_message('"b"'), queue)
        [kept, dropped] = receive(backend, queue, 2)
        assert backend.visibility_timeout_for(kept) == 1.0
        backend.extend_visibility(kept, 10)
        started = time.monotonic()
        [back] = receive(backend, queue, 1, timeout=10)
        assert back.message_id == dropped.message_id
        assert time.monotonic() - started < 8
        backend.acknowledge_batch([kept, back])
        assert backend.queue_stats(queue.name).total == 0
    finally:
        backend.delete_queue(queue)


@pytest.mark.rabbitmq
def test_on_amqp_the_rabbitmq_backend_reads_what_the_kombu_backend_published() -> None:
    from melange.backends.rabbitmq import RabbitMQBackend

    kombu = KombuBackend(transport_url("amqp"))
    queue, _ = kombu.declare_queue(_name("q"))
    rabbit = RabbitMQBackend(host="127.0.0.1", port=5672)
    try:
        sent = make_message('{"n": 1}', manifest="Order")
        sent.headers["causation_id"] = "cause-9"
        kombu.publish_to_queue(sent, queue)
        [got] = receive(rabbit, rabbit.get_queue(queue.name), 1)
        assert (got.message_id, got.content, got.manifest) == (sent.message_id, '{"n": 1}', "Order")
        assert got.serializer_id == 1
        assert got.headers["causation_id"] == "cause-9"
        rabbit.acknowledge(got)
    finally:
        rabbit.close_connection()
        kombu.delete_queue(queue)
        kombu.close_connection()


@pytest.mark.parametrize("transport", [pytest.param("redis", marks=pytest.mark.redis)])
def test_on_redis_deleting_what_was_declared_leaves_no_key_behind(
    make_kombu: Callable[..., KombuBackend], prefix: str
) -> None:
    import redis

    backend = make_kombu()
    topic = backend.declare_topic(_name("t"))
    queue, dead = backend.declare_queue(
        _name("q"), topic, dead_letter_queue_name=_name("dlq"), filter_events=["A*#.b"]
    )
    assert dead is not None
    backend.publish_to_topic(make_message('"1"', manifest="A*#.b"), topic)
    backend.publish_to_topic(make_message('"2"', manifest="Axx.b"), topic)
    [got] = receive(backend, queue, 1)
    assert got.content == '"1"'  # wildcard characters of a manifest match only themselves
    backend.acknowledge(got)
    for made in (queue, dead):
        backend.delete_queue(made)
    backend.delete_topic(topic)
    with redis.Redis(host="127.0.0.1", port=6379, db=0) as client:
        assert list(client.scan_iter(match=f"{prefix}*")) == []


def test_the_asyncio_backend_purges_the_ready_messages_of_a_queue(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    from melange.backends.kombu import AsyncKombuBackend

    other = make_kombu()
    queue, _ = other.declare_queue(_name("purged"))
    other.publish_batch_to_queue([make_message(f'{{"n": {n}}}') for n in range(3)], queue)
    backend = AsyncKombuBackend(backend=make_kombu())

    async def purge() -> int | None:
        try:
            return await backend.purge(queue.name)
        finally:
            await backend.aclose()

    try:
        assert asyncio.run(purge()) == 3
        assert other.queue_stats(queue.name).ready == 0
    finally:
        other.delete_queue(queue)


@pytest.mark.parametrize("transport", [pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def test_on_amqp_the_asyncio_backend_receives_and_acknowledges_on_its_loop(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    """Once its queue is consumed, a receive waits for deliveries on the event loop and an
    acknowledgement is written from it: neither needs one of the backend's threads, which a
    service's publishes may all be holding."""
    from melange.backends.kombu import AsyncKombuBackend

    publisher = make_kombu()
    queue, _ = publisher.declare_queue(_name("inline"))
    backend = AsyncKombuBackend(backend=make_kombu(), max_threads=2)
    release = threading.Event()

    async def scenario() -> tuple[float, float, str]:
        # The first receive starts the queue's consumer (a round trip, on a thread).
        assert await backend.retrieve_messages(queue, wait_seconds=0.2) == []
        loop = asyncio.get_running_loop()
        busy = [loop.run_in_executor(backend._executor, release.wait, 30) for _ in range(2)]
        started = time.monotonic()
        threading.Timer(0.3, publisher.publish_to_queue, (make_message('"late"'), queue)).start()
        [got] = await backend.retrieve_messages(queue, wait_seconds=10)
        received = time.monotonic() - started
        await backend.acknowledge(got)
        acknowledged = time.monotonic() - started
        release.set()
        await asyncio.gather(*busy)
        await backend.aclose()
        return received, acknowledged, got.content

    try:
        received, acknowledged, content = asyncio.run(scenario())
        assert content == '"late"'
        assert 0.25 < received < 3  # the publish at 0.3 s, not the threads' release
        assert acknowledged < 3
        deadline = time.monotonic() + 10
        while publisher.queue_stats(queue.name).total and time.monotonic() < deadline:
            time.sleep(0.05)  # the broker counts the closed consumer's messages back first
        assert publisher.queue_stats(queue.name).total == 0  # acknowledged, not given back
    finally:
        release.set()
        publisher.delete_queue(queue)


@pytest.mark.parametrize("transport", [pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def test_on_amqp_interrupt_ends_a_receive_waiting_on_the_loop(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    from melange.backends.kombu import AsyncKombuBackend

    other = make_kombu()
    queue, _ = other.declare_queue(_name("interrupted"))
    backend = AsyncKombuBackend(backend=make_kombu())

    async def scenario() -> tuple[list[object], float]:
        await backend.retrieve_messages(queue, wait_seconds=0.1)  # consumed from now on
        threading.Timer(0.3, backend.interrupt).start()
        started = time.monotonic()
        got = await backend.retrieve_messages(queue, wait_seconds=20)
        waited = time.monotonic() - started
        await backend.aclose()
        return list(got), waited

    try:
        got, waited = asyncio.run(scenario())
        assert got == []
        assert waited < 3
    finally:
        other.delete_queue(queue)


def _bounded_queue(name: str) -> None:
    """A queue holding two messages at most, refusing publishes beyond (``basic.nack``)."""
    import kombu

    with kombu.Connection(transport_url("amqp")[len("kombu+") :]) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(
                name,
                durable=True,
                auto_delete=False,
                arguments={"x-max-length": 2, "x-overflow": "reject-publish"},
            )
        finally:
            channel.close()


@pytest.mark.parametrize("transport", [pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def test_on_amqp_a_publish_the_broker_refuses_is_a_publish_error_under_both_apis(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    from melange.backends.kombu import AsyncKombuBackend

    backend = make_kombu()
    name = _name("bounded")
    _bounded_queue(name)
    queue = backend.get_queue(name)
    async_backend = AsyncKombuBackend(backend=make_kombu())
    try:
        backend.publish_to_queue(make_message('"kept"'), queue)
        with pytest.raises(PublishError, match="refused 2 of 3"):
            backend.publish_batch_to_queue([make_message(f'"{n}"') for n in range(3)], queue)

        async def publish_async() -> None:
            # The first publish opens the connection on a thread; the next are written from
            # the loop, and their confirms read on it.
            with pytest.raises(PublishError, match="refused 1 of 1"):
                await async_backend.publish_to_queue(make_message('"a"'), queue)
            with pytest.raises(PublishError, match="refused 1 of 1"):
                await async_backend.publish_to_queue(make_message('"b"'), queue)
            await async_backend.aclose()

        asyncio.run(publish_async())
        kept = receive(backend, queue, 2)
        assert [m.content for m in kept] == ['"kept"', '"0"']  # the refused ones never got in
        backend.acknowledge_batch(kept)
    finally:
        backend.delete_queue(queue)


@pytest.mark.parametrize("transport", [pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def test_on_amqp_the_asyncio_backend_publishes_from_its_loop(
    make_kombu: Callable[..., KombuBackend],
) -> None:
    """Once the connection is open (and a topic known), publishes are written from the loop
    and their confirms awaited on it: they go on while every thread of the backend is held."""
    from melange.backends.kombu import AsyncKombuBackend

    reader = make_kombu()
    topic = reader.declare_topic(_name("t"))
    queue, _ = reader.declare_queue(_name("published"), topic)
    backend = AsyncKombuBackend(backend=make_kombu(), max_threads=2)
    release = threading.Event()

    async def scenario() -> float:
        await backend.publish_to_queue(make_message('"first"'), queue)  # opens the connection
        await backend.publish_to_topic(make_message('"t0"', manifest="Ev"), topic)  # checks it
        loop = asyncio.get_running_loop()
        busy = [loop.run_in_executor(backend._executor, release.wait, 30) for _ in range(2)]
        started = time.monotonic()
        await backend.publish_batch_to_queue([make_message(f'"{n}"') for n in range(50)], queue)
        await backend.publish_to_topic(make_message('"t1"', manifest="Ev"), topic)
        took = time.monotonic() - started
        release.set()
        await asyncio.gather(*busy)
        await backend.aclose()
        return took

    try:
        assert asyncio.run(scenario()) < 5  # not held until the threads' release at 30 s
        got = receive(reader, queue, 53)
        assert sorted(m.content for m in got) == sorted(
            ['"first"', '"t0"', '"t1"', *(f'"{n}"' for n in range(50))]
        )
        reader.acknowledge_batch(got)
    finally:
        release.set()
        reader.delete_queue(queue)
        reader.delete_topic(topic)
