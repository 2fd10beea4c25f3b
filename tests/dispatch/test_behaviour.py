"""The dispatcher's behaviour, once, under both drivers.

Every test runs with the threaded ``MessageDispatcher`` and the asyncio
``AsyncMessageDispatcher`` (the ``driver`` fixture) on the in-memory and the SQLite backend
(the ``backend`` fixture, both on a fake clock, so nothing waits for a timeout to run out),
and, unless it steps that fake clock, on RabbitMQ and on SQS too (``ON_EVERY_BACKEND``;
FIFO tests on the brokers with FIFO queues). A difference between the dispatchers, or
between the brokers, therefore fails a test here.

Acknowledgement, retries and dead letters with their headers, immediate retries, non-retryable
exceptions, poison messages, deduplication and claims held elsewhere, FIFO groups, graceful
stop, hostile exceptions, lease renewal while a handler runs long, and (asyncio only) plain
consumers that must not block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from drivers import (
    Broker,
    Driver,
    NativeAsyncBackend,
    NativeAsyncCache,
    PerLoopBackend,
    json_message,
    payload_of,
    wait_for,
)

from melange import (
    Consumer,
    FailurePolicy,
    InMemoryCache,
    InMemoryMessagingBackend,
    Message,
    MessageDispatcher,
    MessagingBackendFactory,
    PickleSerializer,
    current_message,
)
from melange.aio import AsyncMessageDispatcher
from melange.exceptions import BackendConnectionError
from melange.models import (
    FAILURE_ATTEMPTS,
    FAILURE_CONSUMER,
    FAILURE_EXCEPTION,
    FAILURE_QUEUE,
    FAILURE_REASON,
)
from melange.testing.conformance import unique_name
from service_check import require_service

_RABBITMQ = pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)
_SQS = pytest.param("sqs", marks=pytest.mark.sqs)
_REDIS_STREAMS = pytest.param("redis-streams", marks=pytest.mark.redis)
_NATS = pytest.param("nats", marks=pytest.mark.nats)
_KAFKA = pytest.param("kafka", marks=pytest.mark.kafka)
_KOMBU_REDIS = pytest.param("kombu-redis", marks=pytest.mark.redis)
_KOMBU_AMQP = pytest.param("kombu-amqp", marks=pytest.mark.rabbitmq)
#: Tests that need neither the fake clock nor a queue's exact depth: every backend.
ON_EVERY_BACKEND = pytest.mark.parametrize(
    "backend",
    ["memory", "sqlite", _RABBITMQ, _SQS, _REDIS_STREAMS, _NATS, _KAFKA, _KOMBU_REDIS, _KOMBU_AMQP],
    indirect=True,
)
#: Tests on FIFO queues: every backend that has them (not RabbitMQ).
ON_EVERY_FIFO_BACKEND = pytest.mark.parametrize(
    "backend", ["memory", "sqlite", _SQS, _REDIS_STREAMS, _NATS, _KAFKA], indirect=True
)
#: Why two FIFO tests do not run on the SQS test server: when several in-flight messages of a
#: group turn visible together (a failed one and those given back behind it), moto's FIFO
#: emulation releases the group's hold one message at a time as it walks the queue, and can
#: deliver a later message first or the same one twice. Real SQS holds the group; the other
#: FIFO tests, and these on every other FIFO broker, check Melange's side.
MOTO_FIFO_RELEASES = "moto's FIFO emulation mishandles several in-flight messages turning visible"
ASYNCIO_ONLY = pytest.mark.parametrize("driver", ["asyncio", "asyncio-native"], indirect=True)
#: Messages processed at once in the loop tests: one at a time, and a pool.
CONCURRENCY = pytest.mark.parametrize("concurrency", [1, 4])

#: Longer than every visibility timeout the fake-clock brokers use (30 s by default).
PAST_ANY_LEASE = 31.0
#: How long a loop may take to end after a consumer raised SystemExit or KeyboardInterrupt.
FATAL_GRACE_SECONDS = 3.0


class Boom(Exception):
    """A consumer's failure."""


class Recorder:
    """A consumer callback that records its calls, thread-safely, and what
    ``current_message()`` said about each."""

    def __init__(self, fail: Callable[[Any, int], bool] | None = None) -> None:
        self.calls: list[Any] = []
        self.attempts: list[int | None] = []
        self._fail = fail
        self._lock = threading.Lock()

    def __call__(self, payload: Any) -> None:
        message = current_message()
        attempt = message.attempt if message is not None else None
        with self._lock:
            self.calls.append(payload)
            self.attempts.append(attempt)
            earlier = sum(1 for c in self.calls if c == payload)
        if self._fail is not None and self._fail(payload, earlier):
            raise Boom(f"{payload} fails on call {earlier}")


def consume_until(
    driver: Driver,
    dispatcher: MessageDispatcher,
    broker: Broker,
    queue: str,
    condition: Callable[[], bool],
    rounds: int = 20,
    **kwargs: Any,
) -> None:
    """``consume_event`` on ``queue`` until ``condition()`` holds (at most ``rounds`` calls)."""
    kwargs.setdefault("wait_seconds", broker.wait)
    for _ in range(rounds):
        if condition():
            return
        driver.consume_event(dispatcher, queue, **kwargs)
    assert condition(), f"not reached after {rounds} consume_event calls: {condition}"


def numbers(messages: list[Message]) -> list[int]:
    return [payload_of(m)["n"] for m in messages]


def attempt_after_release(broker: Broker) -> int:
    """The attempt of a message received once, released, and received again: still the
    first, except on SQS and NATS, whose only count is the receive count (see
    ``MessagingBackend.release``)."""
    return 2 if broker.kind in ("sqs", "nats") else 1


# -- acknowledgement and the counters -------------------------------------------------------


@ON_EVERY_BACKEND
def test_messages_every_consumer_handles_are_acknowledged(driver: Driver, broker: Broker) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": n} for n in range(3)])
    first, second = Recorder(), Recorder()
    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(first, name="first"), Consumer(second, name="second")],
    )
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.acknowledged == 3)
    assert sorted(p["n"] for p in first.calls) == sorted(p["n"] for p in second.calls) == [0, 1, 2]
    broker.assert_empty(queue)
    stats = dispatcher.stats
    assert (stats.received, stats.acknowledged, stats.retried, stats.dead_lettered) == (3, 3, 0, 0)


@ON_EVERY_BACKEND
def test_a_message_no_consumer_accepts_is_acknowledged_without_running_a_consumer(
    driver: Driver, broker: Broker
) -> None:
    queue, dlq = broker.queue()
    broker.publish(queue, [{"kind": "theirs"}])
    mine = Recorder()
    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(mine, accepts=lambda p: p.get("kind") == "mine", name="picky")],
    )
    assert driver.consume_event(dispatcher, queue, wait_seconds=broker.wait) == 1
    assert mine.calls == []
    broker.assert_empty(queue)
    broker.assert_empty(dlq)
    assert (dispatcher.stats.received, dispatcher.stats.acknowledged) == (1, 1)


@ON_EVERY_BACKEND
@CONCURRENCY
def test_stats_add_up_over_successes_retries_dead_letters_poison_duplicates_and_skips(
    driver: Driver, broker: Broker, concurrency: int
) -> None:
    queue, dlq = broker.queue()
    cache = InMemoryCache()
    duplicate = broker.publish_for_id(queue, json_message({"n": 100}))
    cache.mark_done(f"counting.{duplicate}")
    # n % 4 == 0 always fails (dead-lettered after 2 attempts), n % 4 == 1 fails once.
    broker.publish(queue, [{"n": n} for n in range(12)])
    broker.publish_raw(
        queue,
        [
            Message(None, "{broken", serializer_id=1, manifest="json"),
            Message(None, '{"n": 1}', serializer_id=99, manifest="json"),
        ],
    )
    broker.publish(queue, [{"unwanted": True}])
    handler = Recorder(fail=lambda p, call: p["n"] % 4 == 0 or (p["n"] % 4 == 1 and call == 1))
    dispatcher = driver.make(
        backend=broker.backend,
        cache=cache,
        consumers=[Consumer(handler, accepts=lambda p: "n" in p, name="counting")],
        failure_policy=FailurePolicy.no_delay(max_attempts=2),
    )
    loop = driver.run_loop(dispatcher, queue, concurrency)
    dead = broker.take(dlq, expected=5, timeout=30)
    wait_for(
        lambda: dispatcher.stats.acknowledged == 11 and dispatcher.stats.dead_lettered == 5,
        30,
        "every message to be settled",
    )
    loop.stop()
    stats = dispatcher.stats
    settled = stats.acknowledged + stats.retried + stats.dead_lettered + stats.released
    assert stats.received == settled
    expected = {
        "received": 22,
        "acknowledged": 6 + 3 + 1 + 1,  # successes, fail-once, duplicate, unwanted
        "retried": 3 + 3,  # first attempts of the always- and of the once-failing
        "dead_lettered": 3 + 2,  # always-failing and poison
        "released": 0,
        "poison": 2,
        "duplicates_skipped": 1,
        "consumer_failures": 2 * 3 + 3,
    }
    counted = stats.as_dict()
    assert {name: counted.get(name) for name in expected} == expected
    assert len(dead) == 5
    broker.assert_empty(queue)
    broker.assert_empty(dlq)


# -- failures, retries and dead letters -----------------------------------------------------


@ON_EVERY_BACKEND
def test_a_failing_consumer_is_retried_per_policy_then_dead_lettered_with_failure_headers(
    driver: Driver, broker: Broker
) -> None:
    queue, dlq = broker.queue()
    [sent] = broker.publish(queue, [{"n": 1}])
    failing = Recorder(fail=lambda p, call: True)
    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(failing, name="payments")],
        failure_policy=FailurePolicy.no_delay(max_attempts=3),
    )
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.dead_lettered == 1)
    assert failing.attempts == [1, 2, 3]
    [dead] = broker.take(dlq, expected=1)
    assert dead.content == sent.content
    if broker.kind != "sqs":  # on SQS, every message (the copy too) has an id of SQS's
        assert dead.message_id == sent.message_id
    headers = dead.headers
    assert headers[FAILURE_REASON].startswith("gave up after 3 attempt(s): Boom"), headers
    assert "fails on call 3" in headers[FAILURE_REASON]
    assert headers[FAILURE_EXCEPTION].endswith(".Boom")
    assert headers[FAILURE_ATTEMPTS] == "3"
    assert headers[FAILURE_CONSUMER] == "payments"
    assert headers[FAILURE_QUEUE] == queue
    broker.assert_empty(queue)
    stats = dispatcher.stats
    assert (stats.received, stats.retried, stats.dead_lettered) == (3, 2, 1)
    assert (stats.acknowledged, stats.consumer_failures) == (0, 3)


@ON_EVERY_BACKEND
def test_immediate_retries_call_the_consumer_again_at_once_within_one_attempt(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": 1}])
    flaky = Recorder(fail=lambda p, call: call <= 2)
    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(flaky, name="flaky")],
        failure_policy=FailurePolicy(immediate_retries=2, initial_delay=0, jitter=0),
    )
    assert driver.consume_event(dispatcher, queue, wait_seconds=broker.wait) == 1
    assert flaky.calls == [{"n": 1}] * 3
    assert flaky.attempts == [1, 1, 1]
    broker.assert_empty(queue)
    stats = dispatcher.stats
    assert (stats.acknowledged, stats.retried, stats.consumer_failures) == (1, 0, 0)


@ON_EVERY_BACKEND
def test_a_non_retryable_exception_dead_letters_at_once(driver: Driver, broker: Broker) -> None:
    queue, dlq = broker.queue()
    broker.publish(queue, [{"n": 1}])
    calls: list[Any] = []

    def reject(payload: Any) -> None:
        calls.append(payload)
        raise ValueError("invalid order")

    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(reject, name="orders")],
        failure_policy=FailurePolicy(max_attempts=5, non_retryable=(ValueError,), initial_delay=0),
    )
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.dead_lettered == 1)
    assert calls == [{"n": 1}]
    [dead] = broker.take(dlq, expected=1)
    assert dead.headers[FAILURE_REASON].startswith("non-retryable exception: ValueError")
    assert "invalid order" in dead.headers[FAILURE_REASON]
    assert dead.headers[FAILURE_EXCEPTION] == "builtins.ValueError"
    assert dead.headers[FAILURE_ATTEMPTS] == "1"
    assert dead.headers[FAILURE_CONSUMER] == "orders"
    assert dispatcher.stats.retried == 0
    broker.assert_empty(queue)


@ON_EVERY_BACKEND
@CONCURRENCY
def test_poison_is_dead_lettered_with_a_reason_never_reaches_a_consumer_nor_stops_the_loop(
    driver: Driver, broker: Broker, concurrency: int
) -> None:
    queue, dlq = broker.queue()
    poison = {
        "garbage": Message(None, "{not json", serializer_id=1, manifest="json"),
        "unknown-id": Message(None, '{"n": -1}', serializer_id=99, manifest="json"),
        "no-id": Message(None, '{"n": -2}', serializer_id=None, manifest="json"),
        "pickle": Message(
            None, PickleSerializer().serialize({"n": -3}), serializer_id=2, manifest="dict"
        ),
    }
    mixed: list[Message] = []
    for n, (kind, message) in enumerate(poison.items()):
        message.headers["kind"] = kind
        mixed += [json_message({"n": n}), message]
    mixed.append(json_message({"n": len(poison)}))
    broker.publish_raw(queue, mixed)
    good = Recorder()
    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(good, name="good")])
    loop = driver.run_loop(dispatcher, queue, concurrency)
    wait_for(
        lambda: dispatcher.stats.dead_lettered == 4 and dispatcher.stats.acknowledged == 5,
        20,
        "the poison to be dead-lettered and the good messages processed",
    )
    loop.stop()
    assert sorted(p["n"] for p in good.calls) == [0, 1, 2, 3, 4]
    dead = {m.headers["kind"]: m for m in broker.take(dlq, expected=4)}
    assert set(dead) == set(poison)
    for kind, message in dead.items():
        assert message.headers[FAILURE_REASON].startswith("undecodable message"), kind
        assert message.content == poison[kind].content
    assert "not valid JSON" in dead["garbage"].headers[FAILURE_REASON]
    assert "serializer id 99" in dead["unknown-id"].headers[FAILURE_REASON]
    assert "no serializer id" in dead["no-id"].headers[FAILURE_REASON]
    assert "serializer id 2" in dead["pickle"].headers[FAILURE_REASON]
    stats = dispatcher.stats
    assert (stats.poison, stats.dead_lettered, stats.consumer_failures) == (4, 4, 0)
    broker.assert_empty(queue)


# -- deduplication --------------------------------------------------------------------------


@ON_EVERY_BACKEND
def test_a_redelivered_message_already_processed_is_skipped_and_acknowledged(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    cache = InMemoryCache()
    done = broker.publish_for_id(queue, json_message({"n": 1}))
    cache.mark_done(f"dedup.{done}")  # processed before it came back
    broker.publish(queue, [{"n": 2}])
    handler = Recorder()
    dispatcher = driver.make(
        backend=broker.backend, cache=cache, consumers=[Consumer(handler, name="dedup")]
    )
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.acknowledged == 2)
    assert handler.calls == [{"n": 2}]
    assert dispatcher.stats.duplicates_skipped == 1
    assert dispatcher.stats.received == 2
    broker.assert_empty(queue)


@ON_EVERY_BACKEND
def test_on_redelivery_only_the_consumer_that_failed_runs_again(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": 1}])
    ok, flaky = Recorder(), Recorder(fail=lambda p, call: call == 1)
    dispatcher = driver.make(
        backend=broker.backend,
        cache=InMemoryCache(),
        consumers=[Consumer(ok, name="ok"), Consumer(flaky, name="flaky")],
        failure_policy=FailurePolicy.no_delay(max_attempts=3),
    )
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.acknowledged == 1)
    assert ok.calls == [{"n": 1}]
    assert flaky.attempts == [1, 2]
    broker.assert_empty(queue)
    stats = dispatcher.stats
    assert (stats.retried, stats.acknowledged, stats.duplicates_skipped) == (1, 1, 1)


# Embedded brokers only: steps the fake clock through the claim's lease.
def test_a_message_claimed_elsewhere_is_released_for_the_lease_without_using_an_attempt(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    cache = InMemoryCache()
    [sent] = broker.publish(queue, [{"n": 1}])
    key = f"claimed.{sent.message_id}"
    assert cache.claim(key, 60).value == "claimed"  # another process is processing it
    handler = Recorder()
    dispatcher = driver.make(
        backend=broker.backend,
        cache=cache,
        consumers=[Consumer(handler, name="claimed")],
        dedup_lease_seconds=42.0,
        failure_policy=FailurePolicy.no_delay(max_attempts=1),
    )
    assert driver.consume_event(dispatcher, queue) == 1
    assert handler.calls == []
    stats = dispatcher.stats
    assert (stats.released, stats.retried, stats.acknowledged, stats.dead_lettered) == (1, 0, 0, 0)
    # Handed back for the claim's lease: not before, and then with its attempt unused.
    broker.advance(41.0)
    assert broker.receive_now(queue) == []
    broker.advance(2.0)
    [back] = broker.receive_now(queue)
    assert back.message_id == sent.message_id
    assert back.attempt == 1
    broker.backend.release(back)
    # Once the other holder lets go, the message is processed here, on its first attempt
    # (with max_attempts=1 a used-up attempt would have dead-lettered it instead).
    cache.release(key)
    assert driver.consume_event(dispatcher, queue) == 1
    assert handler.calls == [{"n": 1}]
    assert handler.attempts == [1]
    broker.assert_empty(queue)


# -- FIFO groups and stopping ---------------------------------------------------------------


@ON_EVERY_FIFO_BACKEND
def test_fifo_groups_keep_their_order_with_concurrency_even_when_a_message_fails(
    driver: Driver, broker: Broker
) -> None:
    if broker.kind == "sqs":
        pytest.skip(MOTO_FIFO_RELEASES)
    groups, per_group = 3, 8
    queue, _ = broker.queue(fifo=True)
    payloads = [{"g": g, "i": i} for i in range(per_group) for g in range(groups)]
    broker.publish(queue, payloads, group=lambda p: f"group-{p['g']}")
    order: dict[int, list[int]] = {g: [] for g in range(groups)}
    failed: set[tuple[int, int]] = set()
    lock = threading.Lock()

    def handle(payload: dict[str, int]) -> None:
        key = (payload["g"], payload["i"])
        time.sleep(0.002)  # uneven enough to shuffle concurrent handlers
        with lock:
            if payload["i"] % 4 == 1 and key not in failed:
                failed.add(key)
                raise Boom(f"{key} fails on its first delivery")
            order[payload["g"]].append(payload["i"])

    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(handle, name="fifo")],
        failure_policy=FailurePolicy.no_delay(max_attempts=5),
    )
    loop = driver.run_loop(dispatcher, queue, 4)
    wait_for(lambda: sum(map(len, order.values())) == groups * per_group, 30, "every message")
    loop.stop()
    for g in range(groups):
        assert order[g] == list(range(per_group)), f"group {g} out of order: {order[g]}"
    assert len(failed) == groups * 2
    broker.assert_empty(queue)


@ON_EVERY_BACKEND
def test_stop_during_a_batch_finishes_the_message_in_hand_and_releases_the_rest(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": n} for n in range(5)])
    seen: list[int] = []
    dispatcher: MessageDispatcher

    def handle(payload: dict[str, int]) -> None:
        seen.append(payload["n"])
        dispatcher.stop()  # as a signal would, while the first message is in hand

    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(handle, name="stop")])
    assert driver.consume_event(dispatcher, queue, max_messages=10, wait_seconds=broker.wait) == 5
    assert seen == [0]
    stats = dispatcher.stats
    assert (stats.received, stats.acknowledged, stats.released) == (5, 1, 4)
    # Given back at once (not left to the visibility timeout) and with the attempt they had.
    again = broker.receive_count(queue, 4)
    assert sorted(numbers(again)) == [1, 2, 3, 4]
    assert {m.attempt for m in again} == {attempt_after_release(broker)}


@ON_EVERY_FIFO_BACKEND
def test_stop_on_a_loop_finishes_the_message_in_hand_and_releases_those_behind_it(
    driver: Driver, broker: Broker
) -> None:
    if broker.kind in ("nats", "kafka"):
        pytest.skip(f"a {broker.kind} FIFO queue hands out one message of a group at a time")
    if broker.kind == "sqs":
        pytest.skip(MOTO_FIFO_RELEASES)
    queue, _ = broker.queue(fifo=True)
    broker.publish(queue, [{"n": n} for n in range(4)], group="one-group")
    seen: list[int] = []
    dispatcher: MessageDispatcher

    def handle(payload: dict[str, int]) -> None:
        seen.append(payload["n"])
        dispatcher.stop()  # while the others of the batch wait behind this one

    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(handle, name="stop")])
    loop = driver.run_loop(dispatcher, queue, 4)
    assert loop.wait(15), "consume_loop did not return after stop()"
    loop.stop()
    assert seen == [0]
    stats = dispatcher.stats
    assert (stats.received, stats.acknowledged, stats.released) == (4, 1, 3)
    again = broker.receive_count(queue, 3)
    assert numbers(again) == [1, 2, 3]
    assert {m.attempt for m in again} == {attempt_after_release(broker)}


# -- hostile consumers ----------------------------------------------------------------------


class UnprintableError(Exception):
    """An exception that cannot be turned into text."""

    def __str__(self) -> str:
        raise RuntimeError("this exception's __str__ raises")


@ON_EVERY_BACKEND
def test_an_exception_whose_str_raises_neither_aborts_the_batch_nor_loses_its_reason(
    driver: Driver, broker: Broker
) -> None:
    queue, dlq = broker.queue()
    broker.publish(queue, [{"n": n} for n in range(3)])
    handled: list[int] = []

    def handle(payload: dict[str, int]) -> None:
        if payload["n"] == 1:
            raise UnprintableError()
        handled.append(payload["n"])

    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(handle, name="hostile")],
        failure_policy=FailurePolicy.no_delay(max_attempts=2),
    )
    # One receive on the embedded brokers; a broker pushing deliveries may hand the three
    # out over more than one.
    received, deadline = 0, time.monotonic() + 15
    while received < 3 and time.monotonic() < deadline:
        received += driver.consume_event(
            dispatcher, queue, max_messages=10, wait_seconds=broker.wait
        )
    assert received == 3
    assert sorted(handled) == [0, 2], "the rest of the batch was not handled"
    stats = dispatcher.stats
    assert (stats.acknowledged, stats.retried, stats.released) == (2, 1, 0)
    assert driver.consume_event(dispatcher, queue, max_messages=10, wait_seconds=broker.wait) == 1
    [dead] = broker.take(dlq, expected=1)
    assert payload_of(dead) == {"n": 1}
    assert "UnprintableError" in dead.headers[FAILURE_REASON]
    assert dead.headers[FAILURE_EXCEPTION].endswith("UnprintableError")
    assert dead.headers[FAILURE_ATTEMPTS] == "2"
    assert dispatcher.stats.dead_lettered == 1
    broker.assert_empty(queue)


# Embedded brokers only: steps the fake clock past the lease of the message left unsettled.
@CONCURRENCY
@pytest.mark.parametrize("fatal", [SystemExit, KeyboardInterrupt])
def test_a_consumer_raising_systemexit_or_keyboardinterrupt_stops_the_loop_unacknowledged(
    driver: Driver, broker: Broker, concurrency: int, fatal: type[BaseException]
) -> None:
    queue, _ = broker.queue()
    [sent] = broker.publish(queue, [{"n": 1}])
    calls: list[Any] = []

    def handle(payload: Any) -> None:
        calls.append(payload)
        raise fatal()

    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(handle, name="fatal")],
        failure_policy=FailurePolicy.no_delay(max_attempts=3),
    )
    loop = driver.run_loop(dispatcher, queue, concurrency)
    ended = loop.wait(FATAL_GRACE_SECONDS)
    if not ended:
        loop.shutdown()  # stop it before looking at the queue
    assert calls, "the consumer never ran"
    # Not acknowledged: it comes back (at once if handed back, or once its lease runs out).
    broker.advance(PAST_ANY_LEASE)
    back = broker.receive_now(queue)
    assert [m.message_id for m in back] == [sent.message_id], "the message was settled"
    assert dispatcher.stats.acknowledged == 0
    assert ended, (
        f"consume_loop went on for {FATAL_GRACE_SECONDS}s after a consumer raised "
        f"{fatal.__name__}: the exception vanished"
    )


# Embedded brokers only: steps the fake clock past the lease of the unsettled message.
@CONCURRENCY
def test_a_broker_error_while_settling_is_reported_and_the_loop_goes_on(
    driver: Driver, broker: Broker, concurrency: int, caplog: pytest.LogCaptureFixture
) -> None:
    queue, _ = broker.queue()
    [sent] = broker.publish(queue, [{"n": 1}])
    backend = broker.backend
    refused: list[Any] = []

    def refusing_once(acknowledge: Callable[[Any], None]) -> Callable[[Any], None]:
        def settle(what: Any) -> None:
            if not refused:
                refused.append(what)
                raise BackendConnectionError("connection reset while acknowledging")
            acknowledge(what)

        return settle

    # The broker fails the first acknowledgement, whichever call the driver makes.
    backend.acknowledge = refusing_once(backend.acknowledge)  # type: ignore[method-assign]
    backend.acknowledge_batch = refusing_once(backend.acknowledge_batch)  # type: ignore[method-assign]
    handled: list[Any] = []
    reported: list[Exception] = []
    dispatcher = driver.make(backend=backend, consumers=[Consumer(handled.append, name="c")])
    with caplog.at_level(logging.ERROR, logger="melange.dispatcher"):
        loop = driver.run_loop(dispatcher, queue, concurrency, on_exception=reported.append)
        wait_for(lambda: bool(reported), what="the failed acknowledgement to be reported")
        # Unsettled, the message comes back once its lease runs out, and the loop, still
        # consuming, handles it again.
        broker.advance(PAST_ANY_LEASE)
        wait_for(lambda: dispatcher.stats.acknowledged == 1, what="the second delivery acked")
        assert loop.running, "the loop ended after a broker error while settling"
        loop.stop()
    assert handled == [{"n": 1}, {"n": 1}]
    assert [type(exc) for exc in reported] == [BackendConnectionError]
    [record] = [r for r in caplog.records if "failed" in r.getMessage()]
    assert record.__dict__["queue"] == queue
    if concurrency > 1:  # settled on its own, not as part of a batch
        assert record.__dict__["message_id"] == sent.message_id
    assert record.exc_info is not None and record.exc_info[1] is reported[0]
    broker.assert_empty(queue)


# -- leases renewed while a handler runs long -----------------------------------------------


def run_next_to_a_second_dispatcher(
    driver: Driver, handler: Callable[[Any], Any], made: list[MessageDispatcher] | None = None
) -> int:
    """Run a slow ``handler`` on the one message of a queue with a 1 s visibility timeout
    (real clock) while a second dispatcher of the same driver polls the queue too; returns
    how many times the handler started (the dispatchers go to ``made``)."""
    backend = InMemoryMessagingBackend(visibility_timeout=1.0)
    queue = unique_name("lease")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=queue + "-dlq")
    backend.publish_to_queue(json_message({"n": 1}), backend.get_queue(queue))
    try:
        dispatchers = [
            driver.make(
                backend=backend,
                consumers=[Consumer(handler, name="slow")],
                failure_policy=FailurePolicy.no_delay(max_attempts=3),
            )
            for _ in range(2)
        ]
        if made is not None:
            made.extend(dispatchers)
        first = driver.run_loop(dispatchers[0], queue, 1)
        wait_for(lambda: starts(handler) == 1, 10, "the first dispatcher to start the message")
        second = driver.run_loop(dispatchers[1], queue, 1)
        # Until it is acknowledged, or until it was started twice (then the test fails).
        wait_for(
            lambda: (
                starts(handler) > 1
                or (backend.queue_depth(queue) == 0 and ends(handler) == starts(handler))
            ),
            15,
            "the message to be acknowledged",
        )
        second.stop()
        first.stop()
    finally:
        driver.close()
        backend.close_connection()
    return starts(handler)


def starts(handler: Any) -> int:
    return len(handler.started)


def ends(handler: Any) -> int:
    return len(handler.ended)


class SlowSync:
    """A plain consumer that takes 2.5 s."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.ended: list[float] = []

    def __call__(self, payload: Any) -> None:
        self.started.append(time.monotonic())
        time.sleep(2.5)
        self.ended.append(time.monotonic())


class SlowAsync(SlowSync):
    """An ``async`` consumer that takes 2.5 s."""

    async def __call__(self, payload: Any) -> None:  # type: ignore[override]
        self.started.append(time.monotonic())
        await asyncio.sleep(2.5)
        self.ended.append(time.monotonic())


def test_the_lease_of_a_message_a_slow_consumer_holds_is_renewed_so_it_runs_once(
    driver: Driver,
) -> None:
    assert run_next_to_a_second_dispatcher(driver, SlowSync()) == 1


@ASYNCIO_ONLY
def test_the_lease_of_a_message_a_slow_async_consumer_holds_is_renewed_so_it_runs_once(
    driver: Driver,
) -> None:
    assert run_next_to_a_second_dispatcher(driver, SlowAsync()) == 1


@pytest.mark.parametrize("driver", ["asyncio-native"], indirect=True)
def test_an_async_backend_renews_a_slow_async_handlers_lease_on_the_event_loop(
    driver: Driver,
) -> None:
    made: list[MessageDispatcher] = []
    assert run_next_to_a_second_dispatcher(driver, SlowAsync(), made) == 1
    backend = cast(NativeAsyncBackend, made[0].backend)
    assert isinstance(backend, NativeAsyncBackend)
    # 2.5 s on a 1 s lease: renewed every third of a second, each time on the loop's thread.
    assert len(backend.renewals) >= 3, backend.renewals
    assert all(name.startswith("asyncio-native-loop") for name in backend.renewals)


#: The asyncio client of each broker that has one, and the package it needs.
NATIVE_CLIENT_OF = {
    "sqs": ("AsyncAWSBackend", "aiobotocore"),
    "kafka": ("AsyncKafkaBackend", "aiokafka"),
}


@pytest.mark.parametrize("driver", ["asyncio-native"], indirect=True)
@pytest.mark.parametrize("backend", [_SQS, _KAFKA], indirect=True)
def test_the_asyncio_native_driver_runs_on_the_brokers_asyncio_client_where_there_is_one(
    driver: Driver, broker: Broker
) -> None:
    client, package = NATIVE_CLIENT_OF[broker.kind]
    pytest.importorskip(package)
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": n} for n in range(3)])
    handler = Recorder()
    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(handler, name="aio")])
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.acknowledged == 3)
    backend = dispatcher.backend
    assert isinstance(backend, PerLoopBackend), backend
    assert backend.native_type.__name__ == client
    assert backend.made, "no asyncio client was made"
    assert backend.open_clients == 0, "a client outlived its event loop"
    broker.assert_empty(queue)


# -- what each dispatcher accepts -----------------------------------------------------------


def test_the_threaded_dispatcher_refuses_an_async_backend_or_cache_clearly() -> None:
    from melange.deduplication.async_cache import AsyncDeduplicationCache

    backend = InMemoryMessagingBackend()
    with pytest.raises(TypeError, match=r"asynchronous backend.*AsyncMessageDispatcher"):
        MessageDispatcher(PickleSerializer(), backend=NativeAsyncBackend(backend))
    cache: AsyncDeduplicationCache = NativeAsyncCache(InMemoryCache())
    with pytest.raises(TypeError, match=r"asynchronous cache.*AsyncMessageDispatcher"):
        MessageDispatcher(PickleSerializer(), backend=backend, cache=cache)
    with pytest.raises(TypeError, match="backend must be"):
        AsyncMessageDispatcher(PickleSerializer(), backend=object())  # type: ignore[arg-type]
    # The asyncio one takes both, and tells what it was given.
    native = NativeAsyncBackend(backend)
    dispatcher = AsyncMessageDispatcher(PickleSerializer(), backend=native, cache=cache)
    assert dispatcher.backend is native
    dispatcher.close()


@pytest.mark.redis
@pytest.mark.parametrize("driver", ["asyncio"], indirect=True)
def test_async_redis_caches_deduplicate_a_message_delivered_to_two_dispatchers(
    driver: Driver,
) -> None:
    from melange.deduplication.redis_cache import AsyncRedisCache

    host, port = require_service("redis")
    prefix = f"melange-test-{unique_name('dedup')}:"
    backend = InMemoryMessagingBackend(visibility_timeout=1.0)
    queue = unique_name("dedup")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=queue + "-dlq")
    # The same message twice (a redelivery, or a producer retry): one id, two copies.
    original = json_message({"n": 1})
    for _ in range(2):
        copy = Message(original.message_id, original.content, None, 1, original.manifest)
        backend.publish_to_queue(copy, backend.get_queue(queue))
    calls: list[str] = []

    async def slow(payload: Any) -> None:
        calls.append(threading.current_thread().name)
        await asyncio.sleep(1.5)  # longer than the claim's lease: renewed meanwhile

    caches = [AsyncRedisCache(host=host, port=port, key_prefix=prefix) for _ in range(2)]
    dispatchers = [
        cast(
            AsyncMessageDispatcher,
            driver.make(
                backend=backend,
                consumers=[Consumer(slow, name="slow")],
                cache=cache,
                dedup_lease_seconds=0.6,
            ),
        )
        for cache in caches
    ]

    async def main() -> None:
        # Both loops on one event loop, so that the caches are closed on the loop they used.
        loops = [
            asyncio.create_task(d.consume_loop(queue, install_signal_handlers=False))
            for d in dispatchers
        ]
        deadline = time.monotonic() + 20
        while not (backend.queue_depth(queue) == 0 and calls) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for dispatcher in dispatchers:
            dispatcher.stop()
        await asyncio.wait_for(asyncio.gather(*loops), 15)
        for cache in caches:
            await cache.aclose()

    try:
        asyncio.run(main())
        assert backend.queue_depth(queue) == 0
        assert len(calls) == 1, calls
        assert sum(d.stats.acknowledged for d in dispatchers) == 2
    finally:
        driver.close()
        backend.close_connection()
        import redis

        client = redis.Redis(host=host, port=port, socket_timeout=5)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


# -- asyncio: plain consumers off the event loop --------------------------------------------


@ON_EVERY_BACKEND
@ASYNCIO_ONLY
def test_plain_consumers_run_off_the_event_loop_concurrently_and_it_keeps_ticking(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": n} for n in range(4)])
    begun: list[float] = []
    finished: list[float] = []
    lock = threading.Lock()
    dispatcher: MessageDispatcher

    def blocking(payload: Any) -> None:
        with lock:
            begun.append(time.monotonic())
        time.sleep(0.5)
        with lock:
            finished.append(time.monotonic())
            if len(finished) == 4:
                dispatcher.stop()

    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(blocking, name="plain")])
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.05)
            ticks.append(time.monotonic())

    async def main() -> float:
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.monotonic()
        aio = cast(AsyncMessageDispatcher, dispatcher)
        consume = aio.consume_loop(queue, concurrency=4, install_signal_handlers=False)
        try:
            await asyncio.wait_for(consume, timeout=20)
        finally:
            await driver.loop_ending(dispatcher)
        ticking.cancel()
        return started

    started = asyncio.run(main())
    assert len(finished) == 4
    # From the first handler's start: joining a consumer group (Kafka) comes before that.
    took = max(finished) - min(begun)
    assert took < 1.5, f"4 plain consumers sleeping 0.5 s took {took:.2f}s with concurrency 4"
    during = [t for t in ticks if started <= t <= max(finished)]
    assert len(during) > 5, f"the event loop ticked {len(during)} times in {took:.2f}s"
    broker.assert_empty(queue)


class SlowClaims(InMemoryCache):
    """A cache whose claims are answered ``pause`` seconds late."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def claim(self, key: str, lease_seconds: float) -> Any:
        time.sleep(self.pause)
        return super().claim(key, lease_seconds)


@ON_EVERY_BACKEND
def test_a_claim_answered_too_late_for_its_lease_is_not_trusted(
    driver: Driver, broker: Broker
) -> None:
    # Answered after a third of its 0.3 s lease, the claim may be another process's by the
    # time its first renewal comes: the message is given back, its consumer not run.
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": 1}])
    handler = Recorder()
    dispatcher = driver.make(
        backend=broker.backend,
        cache=SlowClaims(0.2),
        dedup_lease_seconds=0.3,
        consumers=[Consumer(handler, name="late-claims")],
    )
    consume_until(driver, dispatcher, broker, queue, lambda: dispatcher.stats.released >= 1)
    assert handler.calls == []
    assert dispatcher.stats.acknowledged == 0


@ON_EVERY_BACKEND
def test_a_consumer_stopping_the_process_gives_its_deduplication_claim_up(
    driver: Driver, broker: Broker
) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": 1}])
    cache = InMemoryCache()

    def stop(payload: Any) -> None:
        raise SystemExit(3)

    dispatcher = driver.make(
        backend=broker.backend, cache=cache, consumers=[Consumer(stop, name="stopper")]
    )
    loop = driver.run_loop(dispatcher, queue)
    assert loop.wait(20), "consume_loop did not stop"
    assert isinstance(loop.error, SystemExit)
    # The message is given back: its claim must not hold the next delivery for a lease.
    assert len(cache) == 0


@ON_EVERY_BACKEND
def test_a_claim_checked_payload_is_fetched_and_a_missing_one_retried_then_dead_lettered(
    driver: Driver, broker: Broker, tmp_path: Any
) -> None:
    from melange.claimcheck import ClaimCheck, DirectoryPayloadStore
    from melange.models import CLAIM_CHECK

    store = DirectoryPayloadStore(tmp_path / "payloads")
    check = ClaimCheck(store, threshold=256)
    queue, dlq = broker.queue()
    lost = check.check_in(json_message({"n": 1, "blob": "x" * 1000}))
    for path in (tmp_path / "payloads").rglob("*"):
        if path.is_file():
            path.unlink()  # its payload is gone before anyone reads it
    kept = check.check_in(json_message({"n": 2, "blob": "y" * 1000}))
    broker.publish_raw(queue, [lost, kept, json_message({"n": 3})])
    got = Recorder()
    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(got, name="large")],
        claim_check=check,
        failure_policy=FailurePolicy.no_delay(max_attempts=2),
    )
    loop = driver.run_loop(dispatcher, queue, 1)
    wait_for(
        lambda: dispatcher.stats.dead_lettered == 1 and dispatcher.stats.acknowledged == 2,
        20,
        "the payload-less message dead-lettered and the others processed",
    )
    loop.stop()
    assert sorted(p["n"] for p in got.calls) == [2, 3]
    assert [p["blob"] for p in got.calls if p["n"] == 2] == ["y" * 1000]  # fetched whole
    [dead] = broker.take(dlq, expected=1)
    # The dead letter is the one whose payload went missing, still carrying its reference.
    assert dead.headers[CLAIM_CHECK] == lost.headers[CLAIM_CHECK]
    assert int(dead.headers[FAILURE_ATTEMPTS]) == 2  # retried, then given up
    assert "payload" in dead.headers[FAILURE_REASON]
    broker.assert_empty(queue)


@ON_EVERY_BACKEND
def test_each_failed_attempt_logs_one_line_its_decision(
    driver: Driver, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    queue, _ = broker.queue()
    broker.publish(queue, [{"n": 1}])

    def refuse(payload: dict[str, int]) -> None:
        raise RuntimeError("warehouse closed")

    dispatcher = driver.make(
        backend=broker.backend,
        consumers=[Consumer(refuse, name="stock")],
        failure_policy=FailurePolicy.no_delay(max_attempts=2),
    )
    with caplog.at_level("INFO", logger="melange.dispatcher"):
        loop = driver.run_loop(dispatcher, queue, 1)
        wait_for(lambda: dispatcher.stats.dead_lettered == 1, 20, "the message dead-lettered")
        loop.stop()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "melange.dispatcher" and "warehouse closed" in r.getMessage()
    ]
    assert len(lines) == 2, lines  # one per attempt: the retry, then the dead letter
    assert "will be retried" in lines[0]
    assert "dead-lettered" in lines[1]
