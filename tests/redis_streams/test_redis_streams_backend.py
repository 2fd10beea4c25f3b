"""What the conformance suite does not cover on Redis Streams: the URL, the core staying free
of redis-py, deduplication ids, atomic topic fan-out, entries deleted only once settled,
leases taken over (and the late settlement that follows), waits that end on time, and the
blocking and asyncio backends sharing queues."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend
from melange.backends.urls import backend_from_url
from melange.exceptions import ConfigurationError, QueueNotFoundError
from melange.models import Message, QueueWrapper
from melange.testing.conformance import make_message, receive

pytestmark = pytest.mark.redis


def test_importing_melange_and_its_urls_does_not_import_redis() -> None:
    code = (
        "import sys, melange, melange.backends.urls, melange.backends;"
        "assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_redis_streams_url_names_the_backend_with_its_options(
    redis_url: str, prefix: str
) -> None:
    url = redis_url.replace("redis://", "redis+streams://:hush@") + f"?prefix={prefix}"
    backend = backend_from_url(url + "&visibility_timeout=7")
    try:
        assert isinstance(backend, RedisStreamsBackend)
        assert backend.visibility_timeout == 7.0
        assert "hush" not in repr(backend)
    finally:
        backend.close_connection()
    with pytest.raises(ConfigurationError, match="unknown option 'colour'") as refused:
        backend_from_url(url + "&colour=red")
    assert "hush" not in str(refused.value)


def test_a_deduplication_id_seen_within_the_window_is_dropped(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams(deduplication_window=1.0)
    queue, _ = backend.declare_queue("orders")
    for _ in range(2):
        message = make_message('"once"')
        message.deduplication_id = "order-1"
        backend.publish_to_queue(message, queue)
    assert backend.queue_depth("orders") == 1
    time.sleep(1.2)
    again = make_message('"after the window"')
    again.deduplication_id = "order-1"
    backend.publish_to_queue(again, queue)
    assert backend.queue_depth("orders") == 2


def test_a_topic_publish_reaches_every_queue_or_none(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams()
    topic = backend.declare_topic("events")
    backend.declare_queue("plain", topic)
    backend.declare_queue("ordered.fifo", topic)
    with pytest.raises(ConfigurationError, match="message_group_id"):
        backend.publish_to_topic(make_message('"no group"'), topic)
    assert backend.queue_depth("plain") == 0
    assert backend.queue_depth("ordered.fifo") == 0
    backend.publish_to_topic(make_message('"grouped"', group="g"), topic)
    assert backend.queue_depth("plain") == 1
    assert backend.queue_depth("ordered.fifo") == 1


def test_entries_are_deleted_once_settled_and_never_before(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams()
    queue, _ = backend.declare_queue("work", visibility_timeout=1)
    backend.publish_batch_to_queue([make_message(str(n)) for n in range(5)], queue)
    got = receive(backend, queue, 5)
    backend.acknowledge_batch(got[:2])
    assert backend.client.xlen(backend.keys.stream("work")) == 3
    # The three left unsettled come back once their lease ran out, and only they.
    again = receive(backend, queue, 3, timeout=10)
    assert sorted(m.content for m in again) == sorted(m.content for m in got[2:])
    assert all(m.attempt == 1 for m in again)
    backend.acknowledge_batch(again)
    assert backend.client.xlen(backend.keys.stream("work")) == 0


def test_a_message_taken_over_after_its_lease_is_settled_by_its_new_receiver_only(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    first, second = make_streams(), make_streams()
    queue, _ = first.declare_queue("work", visibility_timeout=1)
    first.publish_to_queue(make_message('"slow"'), queue)
    [stale] = receive(first, queue, 1)
    [taken] = receive(second, queue, 1, timeout=10)
    assert taken.message_id == stale.message_id
    first.acknowledge(stale)  # too late: a no-op
    first.extend_visibility(stale, 60)  # likewise
    assert first.queue_stats("work").in_flight == 1
    second.acknowledge(taken)
    assert first.queue_depth("work") == 0


def test_a_waiting_receive_wakes_when_a_delayed_nack_is_due_and_on_interrupt(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams()
    queue, _ = backend.declare_queue("work")
    backend.publish_to_queue(make_message('"later"'), queue)
    [first] = receive(backend, queue, 1)
    backend.nack(first, delay=1.0)
    assert backend.queue_stats("work").delayed == 1
    started = time.monotonic()
    [again] = backend.retrieve_messages(queue, wait_seconds=10)
    took = time.monotonic() - started
    # Woken by the delay's end (not by polling); the bound leaves room for a loaded machine.
    assert 0.8 <= took <= 4.0, took
    assert again.attempt == 2
    backend.acknowledge(again)
    # A receive waiting on an empty queue ends at once on interrupt.
    threading.Timer(0.5, backend.interrupt).start()
    started = time.monotonic()
    assert backend.retrieve_messages(queue, wait_seconds=10) == []
    assert time.monotonic() - started < 3.0


def test_queue_options_are_checked_and_a_queue_keeps_its_type(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams()
    with pytest.raises(ConfigurationError, match="delay_seconds"):
        backend.declare_queue("delayed", delay_seconds=5)
    with pytest.raises(ConfigurationError, match="unknown option"):
        backend.declare_queue("odd", colour="red")
    backend.declare_queue("standard")
    with pytest.raises(ConfigurationError, match="cannot change type"):
        backend.declare_queue("standard", fifo=True)
    with pytest.raises(QueueNotFoundError):
        backend.publish_to_queue(make_message('"x"'), QueueWrapper("missing", "missing"))


def test_the_blocking_and_asyncio_backends_share_queues(
    redis_url: str, prefix: str, make_streams: Callable[..., RedisStreamsBackend]
) -> None:
    blocking = make_streams()
    queue, _ = blocking.declare_queue("shared")

    async def publish() -> None:
        async with AsyncRedisStreamsBackend(redis_url, prefix=prefix) as backend:
            handle = await backend.get_queue("shared")
            await backend.publish_batch_to_queue(
                [Message.create(json.dumps({"n": n}), "json", 1) for n in range(3)], handle
            )

    asyncio.run(publish())
    got = receive(blocking, queue, 3)
    assert sorted(json.loads(m.content)["n"] for m in got) == [0, 1, 2]
    blocking.acknowledge_batch(got)


def test_publish_keywords_called_directly_are_honoured_or_refused(
    make_streams: Callable[..., RedisStreamsBackend], redis_url: str, prefix: str
) -> None:
    backend = make_streams()
    queue, _ = backend.declare_queue("orders.fifo")
    events = backend.declare_topic("events")
    subscribed, _ = backend.declare_queue("audit", events)
    backend.publish_to_queue(
        make_message('"a"'), queue, message_group_id="g", message_deduplication_id="d-1"
    )
    backend.publish_to_queue(
        make_message('"b"'), queue, message_group_id="g", message_deduplication_id="d-1"
    )
    [got] = receive(backend, queue, 1)
    assert (got.group_id, got.deduplication_id) == ("g", "d-1")  # and the repeat was dropped
    assert backend.queue_depth("orders.fifo") == 1
    for publish in (
        lambda: backend.publish_to_queue(make_message('"c"'), queue, delay_seconds=5),
        lambda: backend.publish_to_topic(make_message('"c"'), events, delay_seconds=5),
    ):
        with pytest.raises(ConfigurationError, match="delay_seconds"):
            publish()
    assert backend.queue_depth("audit") == 0
    backend.publish_to_topic(make_message('"d"'), events, delay_seconds=0)  # 0: no delay
    assert backend.queue_depth("audit") == 1
    del subscribed

    async def on_asyncio() -> None:
        native = AsyncRedisStreamsBackend(redis_url, prefix=prefix)
        try:
            handle = await native.get_queue("orders.fifo")
            with pytest.raises(ConfigurationError, match="delay_seconds"):
                await native.publish_to_queue(make_message('"e"'), handle, delay_seconds=1)
            await native.publish_to_queue(make_message('"f"'), handle, message_group_id="h")
        finally:
            await native.aclose()

    asyncio.run(on_asyncio())
    assert backend.queue_depth("orders.fifo") == 2


def test_every_field_of_a_received_message_comes_back_as_published(
    streams: RedisStreamsBackend,
) -> None:
    # The receive script hands its deliveries over as JSON: text JSON escapes must survive.
    queue, _ = streams.declare_queue("exact.fifo")
    text = 'ctrl \x00\x01\t\n\r\x1f, slash / \\/ "quoted" \u2028 \U0001f389 [1, {}]'
    message = Message.create(text, "m/\u00e9[]", 7, {"h\u00e9": text, "n": "12"})
    message.group_id = 'g "1"'
    message.deduplication_id = "d/\u00e9"
    streams.publish_to_queue(message, queue)
    [got] = receive(streams, queue, 1)
    assert (got.message_id, got.content, got.serializer_id, got.manifest) == (
        message.message_id,
        text,
        7,
        "m/\u00e9[]",
    )
    assert got.headers == message.headers
    assert (got.group_id, got.deduplication_id, got.attempt) == ('g "1"', "d/\u00e9", 1)
    streams.acknowledge(got)
    assert streams.queue_depth("exact.fifo") == 0


def test_each_thread_keeps_one_connection_and_ended_threads_give_theirs_back(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams()
    queue, _ = backend.declare_queue("work")
    pool = backend.client.connection_pool

    def publish(count: int) -> None:
        for n in range(count):
            backend.publish_to_queue(make_message(str(n)), queue)

    publish(20)
    in_use = len(pool._in_use_connections)
    publish(20)
    assert len(pool._in_use_connections) == in_use  # the same connection, kept
    together = threading.Barrier(4)

    def publish_together() -> None:
        publish(1)
        together.wait()  # every worker holds its connection before any ends
        publish(4)

    workers = [threading.Thread(target=publish_together) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(pool._in_use_connections) == in_use + 4
    # A new thread's first call hands the ended threads' connections back.
    last = threading.Thread(target=publish, args=(1,))
    last.start()
    last.join()
    assert len(pool._in_use_connections) == in_use + 1
    got = receive(backend, queue, 61)
    backend.acknowledge_batch(got)
    assert backend.queue_depth("work") == 0
    backend.close_connection()
    assert len(pool._in_use_connections) == 0
    publish(1)  # a closed backend connects again when used
    assert backend.queue_depth("work") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_publishes_on_connections_of_its_own(
    make_streams: Callable[..., RedisStreamsBackend],
) -> None:
    backend = make_streams()
    queue, _ = backend.declare_queue("work")
    backend.publish_to_queue(make_message('"parent"'), queue)
    pid = os.fork()
    if pid == 0:  # the child: any failure is its exit status
        try:
            for n in range(20):
                backend.publish_to_queue(make_message(f'"child {n}"'), queue)
        except BaseException:
            os._exit(1)
        os._exit(0)
    for n in range(20):
        backend.publish_to_queue(make_message(f'"parent {n}"'), queue)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.queue_depth("work") == 41
