"""Graceful shutdown and bookkeeping: messages in hand are finished, the others are given
back at once, FIFO groups keep their order on a pool of workers, and the counters add up."""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_support import DURABLE_BACKENDS, drain, durable_spec, open_backend, wait_for

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.deduplication.cache import InMemoryCache
from melange.message_dispatcher import MessageDispatcher
from melange.models import Message
from melange.policy import FailurePolicy
from melange.serializers.json import JsonSerializer

QUEUE, FIFO, DLQ = "work", "work.fifo", "work-dlq"


@pytest.fixture(params=["memory", *DURABLE_BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    """A backend whose messages stay invisible for 30 s once received."""
    if request.param == "memory":
        made: MessagingBackend = InMemoryMessagingBackend(visibility_timeout=30.0)
    else:
        made = open_backend(durable_spec(request.param, tmp_path, visibility_timeout=30.0))
    yield made
    made.close_connection()


def publish(
    backend: MessagingBackend, queue: str, payloads: list[dict[str, Any]], group: Any = None
) -> None:
    messages = []
    for payload in payloads:
        message = Message.create(json.dumps(payload), "json", 1)
        if group is not None:
            message.group_id = group(payload) if callable(group) else group
            message.deduplication_id = message.message_id
        messages.append(message)
    backend.publish_batch_to_queue(messages, backend.get_queue(queue))


def run_loop(dispatcher: MessageDispatcher, queue: str, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(
        target=dispatcher.consume_loop,
        args=(queue,),
        kwargs={"install_signal_handlers": False, **kwargs},
        daemon=True,
    )
    thread.start()
    return thread


def test_stop_releases_the_rest_of_a_batch_for_immediate_redelivery(
    backend: MessagingBackend,
) -> None:
    backend.declare_queue(QUEUE)
    publish(backend, QUEUE, [{"n": n} for n in range(10)])
    seen: list[int] = []
    dispatcher: MessageDispatcher

    def handle(payload: dict[str, int]) -> None:
        seen.append(payload["n"])
        dispatcher.stop()  # as a signal would, while the first message is in hand

    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
    assert dispatcher.consume_event(QUEUE, max_messages=10) == 10
    assert seen == [0]
    # Given back, not left to a 30 s visibility timeout: visible again right now.
    again = backend.retrieve_messages(backend.get_queue(QUEUE), max_messages=10, wait_seconds=0)
    assert sorted(json.loads(m.content)["n"] for m in again) == list(range(1, 10))
    stats = dispatcher.stats
    assert (stats.received, stats.acknowledged, stats.released) == (10, 1, 9)


def test_stop_on_a_worker_pool_releases_messages_waiting_behind_their_fifo_group(
    backend: MessagingBackend,
) -> None:
    backend.declare_queue(FIFO)
    publish(backend, FIFO, [{"n": n} for n in range(4)], group="one-group")
    started, finish = threading.Event(), threading.Event()
    seen: list[int] = []

    def handle(payload: dict[str, int]) -> None:
        seen.append(payload["n"])
        started.set()
        assert finish.wait(30)

    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
    thread = run_loop(dispatcher, FIFO, workers=4)
    try:
        assert started.wait(30)
        wait_for(lambda: dispatcher.stats.received >= 1, 10, "the first message")
        dispatcher.stop()
    finally:
        finish.set()
        thread.join(30)
    assert not thread.is_alive()
    assert seen == [0]
    again = backend.retrieve_messages(backend.get_queue(FIFO), max_messages=10, wait_seconds=0)
    assert [json.loads(m.content)["n"] for m in again] == [1, 2, 3]
    stats = dispatcher.stats
    assert stats.received == stats.acknowledged + stats.released


@pytest.mark.parametrize("workers", [1, 4])
def test_fifo_group_order_holds_when_messages_fail_and_are_retried(
    backend: MessagingBackend, workers: int
) -> None:
    groups, per_group = 3, 15
    backend.declare_queue(FIFO)
    payloads = [{"g": g, "i": i} for i in range(per_group) for g in range(groups)]
    publish(backend, FIFO, payloads, group=lambda p: f"group-{p['g']}")
    order: dict[int, list[int]] = collections.defaultdict(list)
    failed: set[tuple[int, int]] = set()
    lock = threading.Lock()

    def handle(payload: dict[str, int]) -> None:
        key = (payload["g"], payload["i"])
        with lock:
            if payload["i"] % 4 == 1 and key not in failed:
                failed.add(key)
                raise Boom(f"{key} fails on its first delivery")
            order[payload["g"]].append(payload["i"])

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(handle)],
        failure_policy=FailurePolicy.no_delay(max_attempts=5),
    )
    thread = run_loop(dispatcher, FIFO, workers=workers)
    try:
        wait_for(lambda: sum(len(v) for v in order.values()) == groups * per_group, 60)
    finally:
        dispatcher.stop()
        thread.join(30)
    for g in range(groups):
        assert order[g] == list(range(per_group)), f"group {g} out of order"


def test_worker_pool_keeps_each_fifo_group_in_order(backend: MessagingBackend) -> None:
    groups, per_group = 5, 40
    backend.declare_queue(FIFO)
    payloads = [{"g": g, "i": i} for i in range(per_group) for g in range(groups)]
    publish(backend, FIFO, payloads, group=lambda p: f"group-{p['g']}")
    order: dict[int, list[int]] = collections.defaultdict(list)
    lock = threading.Lock()
    active, most = [0], [0]
    jitter = random.Random(7)

    def handle(payload: dict[str, int]) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        # Uneven handler times shuffle the threads, so only the dispatcher keeps the order.
        time.sleep(jitter.random() * 0.003)
        with lock:
            order[payload["g"]].append(payload["i"])
            active[0] -= 1

    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[Consumer(handle)])
    thread = run_loop(dispatcher, FIFO, workers=4)
    try:
        wait_for(lambda: sum(len(v) for v in order.values()) == groups * per_group, 60)
    finally:
        dispatcher.stop()
        thread.join(30)
    assert most[0] >= 2, "the pool never ran two messages at once"
    for g in range(groups):
        assert order[g] == list(range(per_group)), f"group {g} out of order"


class Boom(Exception):
    """A consumer failure."""


@pytest.mark.parametrize("workers", [1, 4])
def test_stats_add_up_over_successes_retries_dead_letters_poison_and_duplicates(
    workers: int,
) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue(QUEUE, dead_letter_queue_name=DLQ, max_receive_count=10)
    count = 200
    good = [{"n": n} for n in range(count)]
    publish(backend, QUEUE, good)
    # Poison, and a redelivered duplicate of an id the cache has already seen.
    handle = backend.get_queue(QUEUE)
    for _ in range(5):
        backend.publish_to_queue(Message(None, "{broken", serializer_id=1, manifest="json"), handle)
    cache = InMemoryCache()
    duplicate = Message.create(json.dumps({"n": -1}), "json", 1)
    cache.mark_done(f"counting.{duplicate.message_id}")
    backend.publish_to_queue(duplicate, handle)
    processed: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def handle_one(payload: dict[str, int]) -> None:
        n = payload["n"]
        if n % 10 == 0:
            raise Boom(f"{n} always fails")  # dead-lettered after 2 attempts
        if n % 7 == 0:
            with lock:
                first = processed[-n] == 0
                processed[-n] += 1
            if first:
                raise Boom(f"{n} fails once")  # retried
        with lock:
            processed[n] += 1

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        cache=cache,
        backend=backend,
        consumers=[Consumer(handle_one, name="counting")],
        failure_policy=FailurePolicy.no_delay(max_attempts=2),
    )
    thread = run_loop(dispatcher, QUEUE, workers=workers)
    try:
        wait_for(lambda: backend.queue_depth(QUEUE) == 0, 60, "the queue to drain")
    finally:
        dispatcher.stop()
        thread.join(30)
    always, once = (
        {n for n in range(count) if n % 10 == 0},
        {n for n in range(count) if n % 7 == 0 and n % 10},
    )
    stats = dispatcher.stats
    assert stats.dead_lettered == len(always) + 5 == len(drain(backend, DLQ))
    assert stats.poison == 5
    assert stats.duplicates_skipped == 1
    assert stats.acknowledged == count - len(always) + 1
    assert stats.retried == len(always) + len(once)
    assert stats.consumer_failures == 2 * len(always) + len(once)
    assert stats.received == stats.acknowledged + stats.retried + stats.dead_lettered
    assert stats.received == count + 6 + len(always) + len(once)
