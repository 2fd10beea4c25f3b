"""The test harness: what it records, how it asserts, and how it drives dispatchers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from melange.aio import AsyncMessageDispatcher, AsyncTopicPublisher
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.threaded import MessageDispatcher
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer
from melange.testing import FakeClock, Harness


@dataclass(frozen=True)
class OrderPlaced:
    order_id: int
    customer: str


@dataclass(frozen=True)
class PaymentRequested:
    order_id: int
    amount: int


class DataclassJson(JsonSerializer):
    """JSON for this module's two dataclasses (the manifest is the class name)."""

    types = {cls.__name__: cls for cls in (OrderPlaced, PaymentRequested)}

    def manifest(self, data: Any) -> str:
        return type(data).__name__

    def serialize(self, data: Any) -> str:
        return super().serialize(data.__dict__)

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        return self.types[manifest or ""](**super().deserialize(data))


SERIALIZER = DataclassJson()


def billing(backend: Any, fail: Callable[[OrderPlaced], Exception | None] = lambda e: None) -> Any:
    """The service under test: on OrderPlaced, it publishes PaymentRequested."""
    publisher = TopicPublisher(SERIALIZER, backend)

    def on_order_placed(event: OrderPlaced) -> None:
        error = fail(event)
        if error is not None:
            raise error
        publisher.publish("payments", PaymentRequested(event.order_id, 100), headers={"by": "b"})

    return Consumer(on_order_placed)


POLICY = FailurePolicy(max_attempts=3, initial_delay=10.0, backoff_factor=2.0, jitter=0.0)


def declare(backend: Any) -> None:
    topic = backend.declare_topic("orders")
    backend.declare_queue("billing", topic, dead_letter_queue_name="billing-dlq")


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(serializers=SERIALIZER) as harness:
        declare(harness.backend)
        yield harness


def threaded(harness: Harness, consumer: Consumer) -> Callable[[], int]:
    dispatcher = MessageDispatcher(
        SERIALIZER, backend=harness.backend, consumers=[consumer], failure_policy=POLICY
    )
    return lambda: harness.run(dispatcher, "billing")


def asyncio_driver(harness: Harness, consumer: Consumer) -> Callable[[], int]:
    dispatcher = AsyncMessageDispatcher(
        SERIALIZER, backend=harness.backend, consumers=[consumer], failure_policy=POLICY
    )
    return lambda: asyncio.run(harness.run_async(dispatcher, "billing"))


DRIVERS = pytest.mark.parametrize("driver", [threaded, asyncio_driver], ids=["threaded", "asyncio"])


@DRIVERS
def test_when_billing_gets_order_placed_it_publishes_payment_requested(
    harness: Harness, driver: Callable[[Harness, Consumer], Callable[[], int]]
) -> None:
    run = driver(harness, billing(harness.backend))
    harness.publish_to_topic("orders", OrderPlaced(42, "alice"))

    assert run() == 1

    harness.consumed(OrderPlaced, order_id=42, queue="billing", failed=False)
    match = harness.published(PaymentRequested, order_id=42, to="payments")
    assert match.payload == PaymentRequested(42, 100)
    assert match.kind == "topic"
    assert match.headers["by"] == "b"
    harness.acknowledged(OrderPlaced, order_id=42)
    # The test's own input is not among what the service published.
    harness.not_published(OrderPlaced)
    assert [i.payload for i in harness.inputs] == [OrderPlaced(42, "alice")]


@DRIVERS
def test_a_three_attempt_backoff_runs_on_the_fake_clock_in_milliseconds(
    harness: Harness, driver: Callable[[Harness, Consumer], Callable[[], int]]
) -> None:
    run = driver(harness, billing(harness.backend, lambda e: TimeoutError("bank is down")))
    harness.publish_to_topic("orders", OrderPlaced(7, "bob"))

    started = time.perf_counter()
    assert run() == 3
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0  # the policy waits 10 s, then 20 s
    # Moved over both delays (less the real time the test took meanwhile).
    assert harness.clock.advanced >= 30.0 - elapsed
    harness.retried(OrderPlaced, order_id=7, times=2, reason="TimeoutError")
    retries = [s for s in harness.settled_messages if s.action == "retry"]
    assert [r.delay for r in retries] == [10.0, 20.0]
    assert retries[1].at - retries[0].at >= 10.0
    dead = harness.dead_lettered(OrderPlaced, order_id=7, reason="gave up after 3 attempt(s)")
    assert dead.queue == "billing"
    assert harness.consumed(OrderPlaced, failed=True, times=3).error is not None
    harness.not_published(PaymentRequested)
    assert isinstance(harness.backend, InMemoryMessagingBackend)
    assert harness.backend.queue_depth("billing-dlq") == 1


def test_a_failed_assertion_lists_what_was_published_instead(harness: Harness) -> None:
    run = threaded(harness, billing(harness.backend))
    harness.publish_to_topic("orders", OrderPlaced(41, "carol"))
    run()
    TopicPublisher(SERIALIZER, harness.backend).publish("audit", OrderPlaced(1, "dan"))

    with pytest.raises(AssertionError) as failure:
        harness.published(PaymentRequested, order_id=42)

    assert str(failure.value) == (
        "expected a publish of PaymentRequested with order_id=42, but none matched; "
        "2 published:\n"
        "  1. PaymentRequested(order_id=41, amount=100) to topic 'payments'"
        "  <- order_id was 41, not 42\n"
        "  2. OrderPlaced(order_id=1, customer='dan') to topic 'audit'"
        "  <- is OrderPlaced, not PaymentRequested"
    )


def test_failure_messages_say_when_nothing_happened_or_the_count_is_wrong(
    harness: Harness,
) -> None:
    with pytest.raises(AssertionError) as nothing:
        harness.published(PaymentRequested)
    assert str(nothing.value) == (
        "expected a publish of PaymentRequested, but none matched: nothing was published"
    )
    threaded(harness, billing(harness.backend))
    TopicPublisher(SERIALIZER, harness.backend).publish("payments", PaymentRequested(1, 5))
    wrong_count = r"expected exactly 2 of: a publish of PaymentRequested; 1 matched"
    with pytest.raises(AssertionError, match=wrong_count) as failure:
        harness.published(PaymentRequested, times=2)
    assert "<- matches" in str(failure.value)
    with pytest.raises(AssertionError, match="header by was missing, not 'x'"):
        harness.published(PaymentRequested, headers={"by": "x"})
    with pytest.raises(AssertionError, match="it has no currency"):
        harness.published(PaymentRequested, currency="EUR")
    with pytest.raises(AssertionError, match="on 'payments', not 'refunds'"):
        harness.published(PaymentRequested, to="refunds")
    with pytest.raises(AssertionError, match="expected exactly 0 of"):
        harness.not_published(PaymentRequested, order_id=1)


def test_a_topic_publish_without_subscribers_is_recorded(harness: Harness) -> None:
    QueuePublisher(SERIALIZER, harness.backend).publish("billing", OrderPlaced(3, "eve"))
    TopicPublisher(SERIALIZER, harness.backend).publish("nobody-listens", PaymentRequested(3, 1))

    harness.published(PaymentRequested, to="nobody-listens")
    assert [(p.kind, p.destination) for p in harness.published_messages] == [
        ("queue", "billing"),
        ("topic", "nobody-listens"),
    ]


def test_kinds_are_classes_or_manifests_and_fields_read_mappings_too(harness: Harness) -> None:
    plain = Harness(InMemoryMessagingBackend(auto_create=True)).start()
    try:
        QueuePublisher(JsonSerializer(), plain.backend).publish("jobs", {"job": 5})
        plain.published(dict, job=5)
        plain.published(job=5)
        with pytest.raises(AssertionError, match="job was 5, not 6"):
            plain.published(job=6)
    finally:
        plain.close()
    TopicPublisher(SERIALIZER, harness.backend).publish("payments", PaymentRequested(9, 1))
    harness.published("PaymentRequested", order_id=9)
    with pytest.raises(AssertionError, match="is PaymentRequested, not Refund"):
        harness.published("Refund")


def test_a_closed_harness_records_nothing_more() -> None:
    harness = Harness(serializers=SERIALIZER)
    with harness:
        declare(harness.backend)
    TopicPublisher(SERIALIZER, harness.backend).publish("orders", OrderPlaced(1, "x"))
    MessageDispatcher(
        SERIALIZER, backend=harness.backend, consumers=[Consumer(lambda e: None)]
    ).consume_event("billing")
    assert harness.published_messages == harness.consumed_messages == []
    assert harness.settled_messages == []


def test_clear_forgets_what_happened_so_far(harness: Harness) -> None:
    TopicPublisher(SERIALIZER, harness.backend).publish("payments", PaymentRequested(1, 1))
    harness.clear()
    harness.not_published()


def test_run_skips_a_publish_delay_on_the_fake_clock(harness: Harness) -> None:
    run = threaded(harness, billing(harness.backend))
    harness.publish_to_topic("orders", OrderPlaced(5, "fay"), delay_seconds=3600)

    started = time.perf_counter()
    run()

    assert time.perf_counter() - started < 1.0
    assert harness.clock.advanced >= 3599
    harness.published(PaymentRequested, order_id=5)


def test_run_drives_several_services_back_and_forth(harness: Harness) -> None:
    harness.backend.declare_queue("ledger", harness.backend.declare_topic("payments"))
    ledger: list[PaymentRequested] = []
    services = {
        "billing": MessageDispatcher(
            SERIALIZER, backend=harness.backend, consumers=[billing(harness.backend)]
        ),
        "ledger": MessageDispatcher(
            SERIALIZER, backend=harness.backend, consumers=[Consumer(ledger.append)]
        ),
    }
    harness.publish_to_topic("orders", OrderPlaced(8, "gus"))

    assert harness.run(services) == 2

    harness.consumed(PaymentRequested, order_id=8, queue="ledger")
    assert ledger == [PaymentRequested(8, 100)]


def test_wait_until_published_waits_for_a_service_on_its_own_thread(harness: Harness) -> None:
    dispatcher = MessageDispatcher(
        SERIALIZER, backend=harness.backend, consumers=[billing(harness.backend)]
    )
    with harness.running(dispatcher, "billing"):
        harness.publish_to_topic("orders", OrderPlaced(11, "hal"))
        match = harness.wait_until_published(PaymentRequested, order_id=11, timeout=5)
    assert match.payload.amount == 100


def test_a_wait_that_times_out_says_how_long_it_waited_and_what_happened(
    harness: Harness,
) -> None:
    TopicPublisher(SERIALIZER, harness.backend).publish("payments", PaymentRequested(1, 1))
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"^after waiting 0.2s: expected a publish") as failure:
        harness.wait_until_published(PaymentRequested, order_id=2, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2.0
    assert "order_id was 1, not 2" in str(failure.value)


def test_async_waits_and_inputs_under_an_asyncio_service(harness: Harness) -> None:
    async def scenario() -> None:
        dispatcher = AsyncMessageDispatcher(
            SERIALIZER, backend=harness.backend, consumers=[billing(harness.backend)]
        )
        async with harness.running_async(dispatcher, "billing"):
            await harness.publish_to_topic_async("orders", OrderPlaced(12, "ida"))
            await harness.wait_until_published_async(PaymentRequested, order_id=12, timeout=5)
            await harness.wait_until_consumed_async(OrderPlaced, order_id=12, timeout=5)
            with pytest.raises(AssertionError, match=r"after waiting 0\.05s"):
                await harness.wait_until_retried_async(OrderPlaced, timeout=0.05)
        await AsyncTopicPublisher(SERIALIZER, harness.backend).publish("x", PaymentRequested(0, 0))

    asyncio.run(scenario())
    harness.published(PaymentRequested, to="x")


def test_run_on_a_backend_without_fake_time_waits_for_the_retries(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "harness.db"))
    try:
        with Harness(backend, serializers=SERIALIZER) as harness:
            declare(backend)
            failures = iter([ConnectionError("once")])
            dispatcher = MessageDispatcher(
                SERIALIZER,
                backend=backend,
                consumers=[billing(backend, lambda e: next(failures, None))],
                failure_policy=FailurePolicy(max_attempts=3, initial_delay=0.3, jitter=0.0),
            )
            harness.publish_to_topic("orders", OrderPlaced(13, "jo"))

            started = time.monotonic()
            assert harness.run(dispatcher, "billing") == 2

            assert time.monotonic() - started >= 0.3  # a real broker's delay is real
            harness.retried(OrderPlaced, order_id=13, times=1, reason="ConnectionError")
            harness.published(PaymentRequested, order_id=13)
            assert harness.clock.advanced == 0.0
    finally:
        backend.close_connection()


def test_run_fails_with_the_depths_when_the_queue_never_drains() -> None:
    clock = FakeClock()
    backend = InMemoryMessagingBackend(clock=clock)
    backend.declare_queue("stuck")
    # Real time, not the harness's clock: the harness may not move it.
    with Harness(backend, serializers=SERIALIZER) as harness:
        QueuePublisher(SERIALIZER, backend).publish("stuck", OrderPlaced(1, "k"), delay_seconds=60)
        dispatcher = MessageDispatcher(SERIALIZER, backend=backend, consumers=[])
        with pytest.raises(AssertionError, match=r"still busy after 0.2s \(stuck: 1 message"):
            harness.run(dispatcher, "stuck", timeout=0.2)


def test_run_needs_queues() -> None:
    with Harness() as harness:
        dispatcher = MessageDispatcher(JsonSerializer(), backend=harness.backend)
        with pytest.raises(ValueError, match="queue"):
            harness.run(dispatcher)
        with pytest.raises(TypeError, match="keys of the mapping"):
            harness.run({"a": dispatcher}, "b")


def test_the_fake_clock_only_moves_forward() -> None:
    clock = FakeClock()
    before = clock()
    clock.advance(5)
    assert clock() >= before + 5
    clock.advance_to(before)  # in the past: nothing to do
    assert clock.advanced == 5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_fields_named_like_an_option_are_matched_with_where() -> None:
    with Harness(InMemoryMessagingBackend(auto_create=True)) as harness:
        QueuePublisher(JsonSerializer(), harness.backend).publish("mail", {"to": "bob", "n": 1})

        harness.published(where={"to": "bob"}, n=1, to="mail")
        with pytest.raises(AssertionError, match="to was 'bob', not 'ann'"):
            harness.published(where={"to": "ann"})


def test_an_asyncio_dispatcher_is_driven_with_run_async() -> None:
    with Harness() as harness:
        dispatcher = AsyncMessageDispatcher(JsonSerializer(), backend=harness.backend)
        with pytest.raises(TypeError, match="run_async"):
            harness.run(dispatcher, "jobs")  # type: ignore[arg-type]
