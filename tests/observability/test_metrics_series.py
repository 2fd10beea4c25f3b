"""The series PrometheusMetrics exports are the ones prometheus-client's own Counter, Gauge
and Histogram give for the same events, whatever thread counted them.

PrometheusMetrics counts in plain ints per thread and works some series out at scrape time
(the in-flight gauge is received minus settled); these tests hold it to the plain
prometheus-client metrics fed the same hooks, sample by sample.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from melange.consumers import Consumer
from melange.dispatch.decisions import ACK, Action, Outcome, Verdict
from melange.models import PUBLISHED_AT, Message
from melange.observability.metrics import HANDLER_BUCKETS, LATENCY_BUCKETS, PrometheusMetrics

NOW = 10_000.0


class Reference:
    """The metrics made the plain way: one prometheus-client object per family."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("melange_messages_received", "", ["queue"], registry=r)
        self.processed = Counter(
            "melange_messages_processed", "", ["queue", "consumer", "outcome"], registry=r
        )
        self.failed = Counter("melange_messages_failed", "", ["queue", "consumer"], registry=r)
        self.retried = Counter("melange_messages_retried", "", ["queue"], registry=r)
        self.dead = Counter("melange_messages_dead_lettered", "", ["queue"], registry=r)
        self.settled = Counter("melange_messages_settled", "", ["queue", "outcome"], registry=r)
        self.handler = Histogram(
            "melange_handler_duration_seconds",
            "",
            ["queue", "consumer"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "melange_end_to_end_latency_seconds",
            "",
            ["queue", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("melange_messages_in_flight", "", ["queue"], registry=r)
        self.lock = threading.Lock()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample but the counters' creation times, by name and labels. The handler
    durations depend on the clock (a thread may be switched out for milliseconds within a
    call): only their counts are kept (the +Inf bucket and ``_count``)."""
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.name == "melange_handler_duration_seconds_sum":
                continue
            if (
                sample.name == "melange_handler_duration_seconds_bucket"
                and sample.labels["le"] != "+Inf"
            ):
                continue
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def drive(metrics: PrometheusMetrics, ref: Reference, queue: str, count: int, step: int) -> None:
    """Many messages through every hook and path, into both ``metrics`` and ``ref``."""
    billing, audit = (
        Consumer(lambda p: None, name="billing"),
        Consumer(lambda p: None, name="audit"),
    )
    outcomes = list(Outcome)
    actions = [Action.ACK, Action.RETRY, Action.ACK, Action.DEAD_LETTER, Action.RELEASE]
    # Every action comes with every kind of publish time (action and time vary apart).
    for n in range(count):
        message = Message.create("{}", "json", 1)
        del message.headers[PUBLISHED_AT]  # some have none
        published: float | None = None
        if n % 5:
            published = NOW - (n * step) % 5_000
            message.headers[PUBLISHED_AT] = f"{published:.6f}"
        elif n % 2:
            message.headers[PUBLISHED_AT] = "not a time"
        if n % 13 == 0:
            published = NOW + 5  # the publisher's clock is ahead
            message.headers[PUBLISHED_AT] = f"{published:.6f}"
        metrics.message_received(message, queue)
        with ref.lock:
            ref.received.labels(queue).inc()
            ref.in_flight.labels(queue).inc()
        for consumer in (billing, audit) if n % 3 == 0 else (billing,):
            with metrics.consumer_call(message, consumer):
                pass
            outcome = outcomes[n % len(outcomes)]
            metrics.consumer_finished(message, consumer, outcome, None)
            with ref.lock:
                ref.handler.labels(queue, consumer.name).observe(0.0)
                ref.processed.labels(queue, consumer.name, outcome.value).inc()
                if outcome is Outcome.FAILED:
                    ref.failed.labels(queue, consumer.name).inc()
        action = actions[(n // 3) % len(actions)]
        settled_on = "elsewhere" if n % 17 == 0 else queue
        if n % 11 == 0:
            metrics.settle_failed(message, queue, ConnectionError("gone"))
            with ref.lock:
                ref.settled.labels(queue, "unsettled").inc()
                ref.in_flight.labels(queue).dec()
            continue
        if n % 19 == 0:
            continue  # still in flight at the scrape
        metrics.message_settled(
            message, settled_on, ACK if action is Action.ACK else Verdict(action)
        )
        with ref.lock:
            ref.settled.labels(settled_on, action.value).inc()
            if action is Action.RETRY:
                ref.retried.labels(settled_on).inc()
            if action is Action.DEAD_LETTER:
                ref.dead.labels(settled_on).inc()
            ref.in_flight.labels(settled_on).dec()
            if published is not None:
                ref.latency.labels(settled_on, action.value).observe(max(0.0, NOW - published))
    # Settled without having been received (given back before it was handled).
    metrics.message_settled(Message.create("{}", "json", 1), queue, Verdict(Action.ABANDON))
    metrics.message_settled(Message.create("{}", "json", 1), "acked-only", ACK)
    with ref.lock:
        ref.settled.labels(queue, "abandon").inc()
        ref.settled.labels("acked-only", "ack").inc()


def test_the_series_match_prometheus_clients_own_metrics() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, clock=lambda: NOW)
    ref = Reference()
    drive(metrics, ref, "orders", 400, 37)
    assert samples(registry) == samples(ref.registry)


def test_the_series_match_when_several_threads_and_dispatchers_count() -> None:
    registry = CollectorRegistry()
    ref = Reference()
    # Two dispatchers' middlewares on one registry, four threads, two of them on one queue.
    first = PrometheusMetrics(registry, clock=lambda: NOW)
    second = PrometheusMetrics(registry, clock=lambda: NOW)
    threads = [
        threading.Thread(target=drive, args=(metrics, ref, queue, 300, step))
        for metrics, queue, step in (
            (first, "orders", 37),
            (second, "orders", 91),
            (first, "invoices", 13),
            (second, "invoices", 7),
        )
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = samples(ref.registry)
    assert samples(registry) == expected
    # A message received on one thread and settled on another leaves nothing in flight.
    message = Message.create("{}", "json", 1)
    first.message_received(message, "handover")
    settler = threading.Thread(target=first.message_settled, args=(message, "handover", ACK))
    settler.start()
    settler.join()
    assert registry.get_sample_value("melange_messages_in_flight", {"queue": "handover"}) == 0
    assert registry.get_sample_value("melange_messages_received_total", {"queue": "handover"}) == 1


def test_a_scrape_before_any_message_has_no_series() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    assert [s for family in registry.collect() for s in family.samples] == []


def test_overlapping_calls_of_one_consumer_are_each_timed() -> None:
    # Two handlers of one consumer awaited together on one thread (the asyncio dispatcher):
    # the second call starts while the first runs and ends first.
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    consumer = Consumer(lambda p: None, name="slow")
    first, second = Message.create("{}", "json", 1), Message.create("{}", "json", 1)
    for message in (first, second):
        metrics.message_received(message, "orders")
    outer = metrics.consumer_call(first, consumer)
    outer.__enter__()
    time.sleep(0.03)
    inner = metrics.consumer_call(second, consumer)
    inner.__enter__()
    inner.__exit__(None, None, None)
    time.sleep(0.03)
    outer.__exit__(None, None, None)
    # And a later call again, once both are done.
    with metrics.consumer_call(second, consumer):
        pass

    def bucket(le: str) -> float | None:
        return registry.get_sample_value(
            "melange_handler_duration_seconds_bucket",
            {"queue": "orders", "consumer": "slow", "le": le},
        )

    # (Bounds with room: a loaded machine may switch this thread out for a while.)
    assert bucket("0.025") == 2  # the inner call and the last one took next to no time
    assert bucket("0.05") == 2  # the outer one ran at least 60 ms, not 30
    assert bucket("+Inf") == 3
    total = registry.get_sample_value(
        "melange_handler_duration_seconds_sum", {"queue": "orders", "consumer": "slow"}
    )
    assert total is not None and total >= 0.06
