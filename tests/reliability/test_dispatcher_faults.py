"""Dispatcher faults in one process: flaky consumers, poison messages, concurrent
deliveries of one message, and a deduplication cache that goes away.

The in-memory backend is used where the property is the dispatcher's; the SQLite backend
repeats the smaller cases on a durable broker.
"""

from __future__ import annotations

import base64
import collections
import json
import pickle
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    DURABLE_BACKENDS,
    ThrowawayRedis,
    delete_work_queue,
    drain,
    durable_spec,
    open_backend,
    queue_depth,
    redis_keys,
    wait_for,
)

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.context import current_message
from melange.deduplication.cache import InMemoryCache
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_ATTEMPTS, FAILURE_EXCEPTION, FAILURE_REASON, Message
from melange.policy import FailurePolicy
from melange.serializers.json import JsonSerializer

QUEUE, DLQ = "work", "work-dlq"
OUTAGE_SECONDS = 6.0
LEASE = 2.0


@pytest.fixture(params=["memory", *DURABLE_BACKENDS])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    """A fresh backend with ``work`` and its dead-letter queue ``work-dlq``."""
    if request.param == "memory":
        backend: MessagingBackend = InMemoryMessagingBackend()
    else:
        backend = open_backend(durable_spec(request.param, tmp_path, visibility_timeout=30.0))
    backend.declare_queue(QUEUE, dead_letter_queue_name=DLQ, max_receive_count=10)
    yield backend
    backend.close_connection()


def publish(backend: MessagingBackend, numbers: range, queue: str = QUEUE) -> None:
    handle = backend.get_queue(queue)
    messages = [Message.create(json.dumps({"n": n}), "json", 1) for n in numbers]
    for start in range(0, len(messages), 500):
        backend.publish_batch_to_queue(messages[start : start + 500], handle)


def consume_until(
    dispatcher: MessageDispatcher, condition: Any, timeout: float, queue: str = QUEUE, **kw: Any
) -> None:
    """Run ``consume_loop`` on a thread until ``condition()`` holds, then stop it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            dispatcher.consume_loop(queue, install_signal_handlers=False, **kw)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(condition, timeout, "the consumer to finish its work")
    finally:
        dispatcher.stop()
        thread.join(30)
    assert not thread.is_alive(), "consume_loop did not return after stop()"
    assert not errors, errors


def number(message: Message) -> int:
    return int(json.loads(message.content)["n"])


# -- 1. random failures: processed exactly once or dead-lettered with the reason ------------


class Flaky(Exception):
    """The consumer's simulated failure."""


def fails(n: int, attempt: int) -> bool:
    """Whether the consumer fails message ``n`` on delivery ``attempt`` (20%, reproducible)."""
    return random.Random(n * 1000 + attempt).random() < 0.2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "count"),
    [("memory", 10_000), *[(kind, 1000) for kind in DURABLE_BACKENDS], ("rabbitmq", 1000)],
)
def test_random_failures_end_processed_exactly_once_or_dead_lettered_with_reason(
    kind: str, count: int, tmp_path: Path
) -> None:
    max_attempts = 3
    spec: dict[str, Any] | None = None
    queue, dlq = QUEUE, DLQ
    if kind == "memory":
        backend: MessagingBackend = InMemoryMessagingBackend()
    else:
        spec = durable_spec(kind, tmp_path, visibility_timeout=30.0)
        backend = open_backend(spec)
        queue, dlq = spec["queue"], spec["queue"] + "-dlq"
    try:
        backend.declare_queue(queue, dead_letter_queue_name=dlq, max_receive_count=10)
        run_random_failures(backend, spec, queue, dlq, kind, count, max_attempts)
    finally:
        if spec is not None:
            delete_work_queue(backend, spec)
        backend.close_connection()


def run_random_failures(
    backend: MessagingBackend,
    spec: dict[str, Any] | None,
    queue: str,
    dlq: str,
    kind: str,
    count: int,
    max_attempts: int,
) -> None:
    processed: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def handle(payload: dict[str, int]) -> None:
        message = current_message()
        assert message is not None and message.attempt is not None
        if fails(payload["n"], message.attempt):
            raise Flaky(f"message {payload['n']} failed on attempt {message.attempt}")
        with lock:
            processed[payload["n"]] += 1

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        cache=InMemoryCache(),
        backend=backend,
        consumers=[Consumer(handle, name="flaky")],
        failure_policy=FailurePolicy.no_delay(max_attempts=max_attempts),
    )
    publish(backend, range(count), queue)

    def settled() -> bool:
        # Every message processed or in the dead-letter queue (the DLQ has no consumer, so
        # its depth is exact on every backend).
        with lock:
            done = len(processed)
        return done + queue_depth(backend, dlq, spec) == count

    consume_until(dispatcher, settled, 120, queue, workers=4)
    assert queue_depth(backend, queue, spec) == 0

    dead = drain(backend, dlq, expected=queue_depth(backend, dlq, spec))
    dead_numbers = collections.Counter(number(m) for m in dead)
    expected_dead = {n for n in range(count) if all(fails(n, a) for a in range(1, 4))}
    print(
        f"\n[{kind}] {count} messages, 20% failures per attempt: {len(processed)} processed, "
        f"{len(dead)} dead-lettered, stats {dispatcher.stats.as_dict()}"
    )
    assert set(processed.values()) == {1}
    assert set(dead_numbers.values()) == {1}
    assert set(dead_numbers) == expected_dead
    assert not set(processed) & set(dead_numbers)
    assert len(processed) + len(dead) == count
    for message in dead:
        assert message.headers[FAILURE_REASON].startswith("gave up after 3 attempt(s): Flaky")
        assert message.headers[FAILURE_EXCEPTION].endswith("Flaky")
        assert message.headers[FAILURE_ATTEMPTS] == "3"
    stats = dispatcher.stats
    assert stats.acknowledged == count - len(dead)
    assert stats.dead_lettered == len(dead)
    assert stats.received == stats.acknowledged + stats.retried + stats.dead_lettered


# -- 2. poison messages -------------------------------------------------------------------


class Booby:
    """Unpickling it creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def booby_pickle(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(Booby(marker))).decode("ascii")


def test_the_booby_trapped_pickle_really_fires_when_unpickled(tmp_path: Path) -> None:
    # The control for the poison test: the payload would leave a trace if it were loaded.
    marker = tmp_path / "control"
    pickle.loads(base64.b64decode(booby_pickle(marker)))
    assert marker.exists()


def test_poison_is_dead_lettered_with_reasons_and_good_messages_in_between_are_processed(
    any_backend: MessagingBackend, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    trap = booby_pickle(marker)
    poison = {
        "garbage": Message(None, "not json {", serializer_id=1, manifest="json"),
        "empty": Message(None, "", serializer_id=1, manifest="json"),
        "unknown-id": Message(None, '{"n": 1}', serializer_id=99, manifest="json"),
        "no-id": Message(None, '{"n": 1}', serializer_id=None, manifest="json"),
        "pickle": Message(None, trap, serializer_id=2, manifest="Booby"),
        "pickle-as-json": Message(None, trap, serializer_id=1, manifest="json"),
    }
    for message in poison.values():
        message.headers["kind"] = next(k for k, v in poison.items() if v is message)
    good = [Message.create(json.dumps({"n": n}), "json", 1) for n in range(7)]
    mixed: list[Message] = []
    for index, message in enumerate(good):
        mixed.append(message)
        if index < len(poison):
            mixed.append(list(poison.values())[index])
    any_backend.publish_batch_to_queue(mixed, any_backend.get_queue(QUEUE))
    seen: list[int] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=any_backend,
        consumers=[Consumer(lambda payload: seen.append(payload["n"]), name="good")],
    )
    for _ in range(5):
        dispatcher.consume_event(QUEUE, max_messages=10)

    assert sorted(seen) == list(range(7))
    dead = {m.headers["kind"]: m for m in drain(any_backend, DLQ)}
    assert set(dead) == set(poison)
    for kind, message in dead.items():
        reason = message.headers[FAILURE_REASON]
        assert reason.startswith("undecodable message"), (kind, reason)
        assert message.content == poison[kind].content  # the body is kept for inspection
    assert "not valid JSON" in dead["garbage"].headers[FAILURE_REASON]
    assert "serializer id 99" in dead["unknown-id"].headers[FAILURE_REASON]
    assert "no serializer id" in dead["no-id"].headers[FAILURE_REASON]
    assert "serializer id 2" in dead["pickle"].headers[FAILURE_REASON]
    assert not marker.exists(), "a pickle was loaded by a JSON-only dispatcher"
    assert dispatcher.stats.poison == len(poison)
    assert dispatcher.stats.dead_lettered == len(poison)
    assert queue_depth(any_backend, QUEUE) == 0


# -- 3. one message delivered to two dispatchers at once ----------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["memory", *DURABLE_BACKENDS])
def test_two_dispatchers_sharing_redis_run_a_redelivered_slow_message_once(
    kind: str, tmp_path: Path
) -> None:
    from melange.deduplication.redis_cache import RedisCache

    if kind == "memory":
        shared = InMemoryMessagingBackend()
        backend_a: MessagingBackend = shared
        backend_b: MessagingBackend = shared
    else:
        spec = durable_spec(kind, tmp_path, visibility_timeout=0.3)
        backend_a, backend_b = open_backend(spec), open_backend(spec)
    backend_a.declare_queue(QUEUE, dead_letter_queue_name=DLQ, visibility_timeout=0.3)
    publish(backend_a, range(1))
    runs: list[str] = []
    entered, finish = threading.Event(), threading.Event()

    def slow(payload: dict[str, int]) -> None:
        runs.append(threading.current_thread().name)
        entered.set()
        assert finish.wait(30)

    with redis_keys() as prefix:

        def dispatcher(backend: MessagingBackend) -> MessageDispatcher:
            return MessageDispatcher(
                JsonSerializer(),
                cache=RedisCache(key_prefix=prefix),
                backend=backend,
                consumers=[Consumer(slow, name="slow")],
                # No heartbeat: the visibility timeout expires while the handler runs.
                visibility_heartbeat=False,
                failure_policy=FailurePolicy.no_delay(),
                # Longer than the handler: the claim outlives the visibility timeout.
                dedup_lease_seconds=LEASE,
            )

        first, second = dispatcher(backend_a), dispatcher(backend_b)
        delays: list[float] = []
        release = backend_b.release

        def recording_release(message: Message, delay: float = 0.0) -> None:
            delays.append(delay)
            release(message, delay)

        backend_b.release = recording_release  # type: ignore[method-assign]
        thread = threading.Thread(target=first.consume_event, args=(QUEUE,), name="first")
        thread.start()
        try:
            assert entered.wait(30)
            # The lease runs out: the second dispatcher receives the same message.
            wait_for(lambda: second.consume_event(QUEUE, wait_seconds=0.5) == 1, 30, "redelivery")
            assert second.stats.released == 1  # held by the first one's claim: not run
            # Handed back for the claim's lease, not in a loop that burns its deliveries.
            assert delays == [LEASE]
        finally:
            finish.set()
            thread.join(30)
        wait_for(lambda: second.consume_event(QUEUE, wait_seconds=0.5) == 1, 30, "redelivery")
        assert second.stats.duplicates_skipped == 1
        assert second.stats.received == 2
    assert runs == ["first"]
    assert queue_depth(backend_a, QUEUE) == 0
    assert drain(backend_a, DLQ) == []


# -- 4. Redis goes away while messages are being processed --------------------------------


@pytest.mark.parametrize("fail_open", [False, True])
def test_unreachable_cache_leaves_messages_by_default_and_processes_them_when_failing_open(
    fail_open: bool,
) -> None:
    from melange.deduplication.redis_cache import RedisCache

    backend = InMemoryMessagingBackend()
    backend.declare_queue(QUEUE, dead_letter_queue_name=DLQ)
    publish(backend, range(3))
    seen: list[int] = []
    errors: list[Exception] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        cache=RedisCache(port=1, socket_connect_timeout=1),  # nothing listens there
        backend=backend,
        consumers=[Consumer(lambda payload: seen.append(payload["n"]), name="c")],
        dedup_fail_open=fail_open,
    )
    dispatcher._on_exception = errors.append
    assert dispatcher.consume_event(QUEUE, max_messages=10) == 3
    if fail_open:
        assert sorted(seen) == [0, 1, 2]
        assert dispatcher.stats.acknowledged == 3
        assert backend.queue_depth(QUEUE) == 0
    else:
        assert seen == []
        assert dispatcher.stats.acknowledged == 0
        # Given back without using up an attempt: the outage is not the messages' fault.
        assert dispatcher.stats.released == 3
        assert backend.queue_depth(QUEUE) == 3  # kept for later, not dead-lettered
        assert backend.queue_depth(DLQ) == 0
    assert errors and all("reachable" in str(e) for e in errors)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("workers", [1, 4])
def test_redis_outage_with_fail_closed_default_loses_nothing_and_repeats_nothing(
    workers: int, tmp_path: Path
) -> None:
    from melange.deduplication.redis_cache import RedisCache

    count, stop_at = 40, 10
    backend = InMemoryMessagingBackend()
    # The broker's own redrive stays at its default: an outage must not push messages there.
    backend.declare_queue(QUEUE, dead_letter_queue_name=DLQ)
    publish(backend, range(count))
    processed: collections.Counter[int] = collections.Counter()
    outage = threading.Event()

    def handle(payload: dict[str, int]) -> None:
        processed[payload["n"]] += 1
        if payload["n"] == stop_at:
            redis_server.stop()
            outage.set()

    with ThrowawayRedis(tmp_path) as redis_server:
        dispatcher = MessageDispatcher(
            JsonSerializer(),
            cache=RedisCache(
                port=redis_server.port,
                host="127.0.0.1",
                socket_timeout=2,
                socket_connect_timeout=2,
            ),
            backend=backend,
            consumers=[Consumer(handle, name="during-outage")],
        )
        errors: list[Exception] = []
        thread = threading.Thread(
            target=dispatcher.consume_loop,
            args=(QUEUE, errors.append),
            kwargs={"install_signal_handlers": False, "max_messages": 5, "workers": workers},
            daemon=True,
        )
        thread.start()
        try:
            assert outage.wait(60)
            began = time.monotonic()
            frozen = dict(processed)
            # Keep Redis down well past the default policy's retry delays (1 s, growing), long
            # enough for the broker's redrive (4 receives) to catch messages nacked in a loop.
            wait_for(
                lambda: bool(errors) and time.monotonic() - began >= OUTAGE_SECONDS,
                30,
                "the outage to last",
            )
            outage_errors = len(errors)
            assert dict(processed) == frozen, "processed without deduplication while Redis was down"
        finally:
            redis_server.start()
        try:
            wait_for(lambda: queue_depth(backend, QUEUE) == 0, 60, "the queue to drain")
        finally:
            dispatcher.stop()
            thread.join(30)
    print(
        f"\nRedis outage, workers={workers}: {outage_errors} cache errors while down, "
        f"stats {dispatcher.stats.as_dict()}"
    )
    assert processed == {n: 1 for n in range(count)}
    assert drain(backend, DLQ) == []


# -- the decisions behind the above ---------------------------------------------------------


def test_a_busy_claim_is_released_for_the_lease_and_an_unreachable_cache_for_the_policy() -> None:
    from melange.dispatch_core import Action, ConsumerResult, Outcome, settle

    consumer = Consumer(lambda payload: None, name="c")
    policy = FailurePolicy(initial_delay=1.5, jitter=0.0)
    busy = settle([ConsumerResult(consumer, Outcome.BUSY)], 1, policy, busy_delay=300.0)
    # Released, not retried: no handler ran, so no attempt is used up.
    assert (busy.action, busy.delay) == (Action.RELEASE, 300.0)
    assert "another consumer" in busy.reason
    down = settle([ConsumerResult(consumer, Outcome.NOT_ATTEMPTED)], 1, policy, busy_delay=300.0)
    assert (down.action, down.delay) == (Action.RELEASE, 1.5)
    assert "unreachable" in down.reason
    # Without a lease to go by, a busy claim falls back to the policy's first delay.
    assert settle([ConsumerResult(consumer, Outcome.BUSY)], 1, policy).delay == 1.5


@pytest.mark.parametrize("flavour", ["threaded", "asyncio"])
def test_a_message_claimed_elsewhere_is_handed_back_for_the_claims_lease(flavour: str) -> None:
    import asyncio

    from melange.aio import AsyncMessageDispatcher

    backend = InMemoryMessagingBackend()
    backend.declare_queue(QUEUE, dead_letter_queue_name=DLQ)
    publish(backend, range(1))
    (message,) = backend.peek(QUEUE)
    cache = InMemoryCache()
    assert cache.claim(f"c.{message.message_id}", 60).value == "claimed"  # another process
    delays: list[float] = []
    release = backend.release

    def recording_release(message: Message, delay: float = 0.0) -> None:
        delays.append(delay)
        release(message, delay)

    backend.release = recording_release  # type: ignore[method-assign]
    seen: list[Any] = []
    options: dict[str, Any] = {
        "cache": cache,
        "backend": backend,
        "consumers": [Consumer(seen.append, name="c")],
        "dedup_lease_seconds": 42.0,
    }
    dispatcher: MessageDispatcher
    if flavour == "asyncio":
        dispatcher = AsyncMessageDispatcher(JsonSerializer(), **options)
        asyncio.run(dispatcher.consume_event(QUEUE))  # type: ignore[arg-type]
    else:
        dispatcher = MessageDispatcher(JsonSerializer(), **options)
        dispatcher.consume_event(QUEUE)
    assert seen == []
    assert delays == [42.0]
    # Not an attempt: the message still has all of the failure policy's attempts ahead.
    assert backend.peek(QUEUE)[0].attempt is None
    assert (dispatcher.stats.released, dispatcher.stats.retried) == (1, 0)
