"""Prometheus metrics of a dispatcher, scraped over HTTP while messages flow."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from obs_support import Broker
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.dispatch.decisions import ACK, Action, Verdict
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.threaded import MessageDispatcher
from melange.models import PUBLISHED_AT, Message
from melange.observability.http import ProbeServer
from melange.observability.metrics import PrometheusMetrics, QueueDepth, serve_metrics
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_metrics_endpoint_counts_messages_as_they_flow() -> None:
    registry = CollectorRegistry()
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders", dead_letter_queue_name="orders-dlq")

    def handle(payload: dict[str, int]) -> None:
        time.sleep(0.002)
        if payload["n"] % 10 == 0:
            raise ValueError("refused")

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=handle, name="billing")],
        middleware=[PrometheusMetrics(registry)],
        failure_policy=FailurePolicy(max_attempts=2, initial_delay=0.0, jitter=0.0),
    )
    publisher = QueuePublisher(JsonSerializer(), backend)
    total = 200
    loop = threading.Thread(
        target=dispatcher.consume_loop,
        args=("orders",),
        kwargs={"install_signal_handlers": False, "workers": 2},
    )
    with ProbeServer(0, host="127.0.0.1") as server:
        serve_metrics(server, registry)
        loop.start()
        try:
            seen: list[float] = []
            for n in range(1, total + 1):
                publisher.publish("orders", {"n": n})
                if n % 50 == 0:
                    # Scraped while messages are still being published and handled.
                    seen.append(
                        value(
                            scrape(server.port), "melange_messages_received_total", queue="orders"
                        )
                    )
                    time.sleep(0.05)
            deadline = time.monotonic() + 30
            while (
                value(scrape(server.port), "melange_messages_dead_lettered_total", queue="orders")
                < 20
            ):
                assert time.monotonic() < deadline, "the messages were not all settled"
                time.sleep(0.05)
            final = scrape(server.port)
        finally:
            dispatcher.stop()
            loop.join(10)
            dispatcher.close()
    failures = total // 10
    # Counted while flowing: scrapes taken mid-way saw some of the messages, not all.
    assert seen == sorted(seen)
    assert any(0 < count < total + failures for count in seen)
    ok = total - failures
    assert value(final, "melange_messages_received_total", queue="orders") == total + failures
    assert (
        value(
            final,
            "melange_messages_processed_total",
            queue="orders",
            consumer="billing",
            outcome="succeeded",
        )
        == ok
    )
    assert (
        value(final, "melange_messages_failed_total", queue="orders", consumer="billing")
        == 2 * failures
    )
    assert value(final, "melange_messages_retried_total", queue="orders") == failures
    assert value(final, "melange_messages_dead_lettered_total", queue="orders") == failures
    assert value(final, "melange_messages_settled_total", queue="orders", outcome="ack") == ok
    assert value(final, "melange_messages_in_flight", queue="orders") == 0
    assert (
        value(final, "melange_handler_duration_seconds_count", queue="orders", consumer="billing")
        == total + failures
    )
    # Every handler call slept 2 ms: none is in the 1 ms bucket.
    assert (
        value(
            final,
            "melange_handler_duration_seconds_bucket",
            queue="orders",
            consumer="billing",
            le="0.001",
        )
        == 0
    )
    assert (
        value(final, "melange_end_to_end_latency_seconds_count", queue="orders", outcome="ack")
        == ok
    )
    # Bounded labels: the queue, the consumer, an outcome (and the histograms' buckets).
    assert {name for _, labels in final for name, _ in labels} == {
        "queue", "consumer", "outcome", "le",
    }  # fmt: skip
    assert {v for _, labels in final for n, v in labels if n == "outcome"} <= {
        "succeeded", "failed", "ack", "retry", "dead_letter",
    }  # fmt: skip


def test_end_to_end_latency_runs_from_the_publish_time_header() -> None:
    registry = CollectorRegistry()
    backend = InMemoryMessagingBackend()
    queue, _ = backend.declare_queue("late")
    message = Message.create('{"n": 1}', "json", JsonSerializer().identifier())
    message.headers[PUBLISHED_AT] = f"{time.time() - 42:.6f}"  # published 42 s ago
    backend.publish_to_queue(message, queue)
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=lambda p: None)],
        middleware=[PrometheusMetrics(registry)],
    )  # fmt: skip
    dispatcher.consume_event("late")
    count = registry.get_sample_value(
        "melange_end_to_end_latency_seconds_bucket",
        {"queue": "late", "outcome": "ack", "le": "30.0"},
    )
    assert count == 0
    assert (
        registry.get_sample_value(
            "melange_end_to_end_latency_seconds_bucket",
            {"queue": "late", "outcome": "ack", "le": "60.0"},
        )
        == 1
    )


def test_two_dispatchers_share_a_registry() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    PrometheusMetrics(registry)  # the families are made once per registry


def test_an_unknown_path_is_not_found() -> None:
    with ProbeServer(0, host="127.0.0.1") as server:
        serve_metrics(server, CollectorRegistry())
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nothing", timeout=5)
        assert raised.value.code == 404
        raised.value.close()


def test_queue_depths_are_read_from_the_broker_at_each_scrape(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    backend = SQLiteBackend(tmp_path / "depth.sqlite3")
    try:
        backend.declare_queue("work", dead_letter_queue_name="work-dlq")
        QueueDepth(backend, ["work"], ["work-dlq"], registry)
        publisher = QueuePublisher(JsonSerializer(), backend)
        for n in range(3):
            publisher.publish("work", n)
        publisher.publish("work-dlq", "lost")

        def depth(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        assert depth("melange_queue_messages", queue="work", state="ready") == 3
        assert depth("melange_queue_messages", queue="work", state="total") == 3
        assert depth("melange_dead_letter_queue_messages", queue="work-dlq") == 1
        publisher.publish("work", 3)  # read again at the next scrape
        assert depth("melange_queue_messages", queue="work", state="total") == 4
    finally:
        backend.close_connection()


def test_a_backend_that_counts_only_totals_exports_totals() -> None:
    registry = CollectorRegistry()
    backend = InMemoryMessagingBackend()
    backend.declare_queue("work")
    QueueDepth(backend, ["work", "missing"], None, registry)
    QueuePublisher(JsonSerializer(), backend).publish("work", 1)
    assert (
        registry.get_sample_value("melange_queue_messages", {"queue": "work", "state": "total"})
        == 1
    )
    assert (
        registry.get_sample_value("melange_queue_messages", {"queue": "work", "state": "ready"})
        is None
    )
    # A queue that cannot be read is left out of the scrape, not an error.
    assert (
        registry.get_sample_value("melange_queue_messages", {"queue": "missing", "state": "total"})
        is None
    )


@pytest.mark.parametrize("broker", ["sqs", "rabbitmq"], indirect=True)
def test_queue_depths_on_the_brokers(broker: Broker) -> None:
    registry = CollectorRegistry()
    queue = broker.queue(dead_letter=True)
    if broker.kind == "sqs":
        # SQS tells which queues dead-letter into a queue: the dead-letter queue is found.
        depth = QueueDepth(broker.backend, [queue], None, registry)
        assert depth.dead_letter_queues == (f"{queue}-dlq",)
    else:
        # RabbitMQ tells only through its management plugin: name the dead-letter queue.
        QueueDepth(broker.backend, [queue], [f"{queue}-dlq"], registry)
    QueuePublisher(JsonSerializer(), broker.backend).publish(queue, 1)
    deadline = time.monotonic() + 30
    while (
        registry.get_sample_value("melange_queue_messages", {"queue": queue, "state": "total"}) != 1
    ):
        assert time.monotonic() < deadline  # counts the broker samples may lag a little
        time.sleep(0.5)
    assert (
        registry.get_sample_value("melange_dead_letter_queue_messages", {"queue": f"{queue}-dlq"})
        == 0
    )


def test_a_failed_settlement_and_a_clock_behind_the_publisher() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, clock=lambda: 1_000.0)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    # A broker error while settling: counted as unsettled, no longer in flight, no latency.
    lost = Message.create("{}", "json", 1)
    metrics.message_received(lost, "orders")
    assert sample("melange_messages_in_flight", queue="orders") == 1
    metrics.settle_failed(lost, "orders", ConnectionError("gone"))
    assert sample("melange_messages_settled_total", queue="orders", outcome="unsettled") == 1
    assert sample("melange_messages_in_flight", queue="orders") == 0
    # Published "later" than this process's clock says it is now: a latency of zero.
    early = Message.create("{}", "json", 1)
    early.headers[PUBLISHED_AT] = "1005.0"
    metrics.message_received(early, "orders")
    metrics.message_settled(early, "orders", ACK)
    assert (
        sample(
            "melange_end_to_end_latency_seconds_bucket", queue="orders", outcome="ack", le="0.005"
        )
        == 1
    )
    assert sample("melange_end_to_end_latency_seconds_sum", queue="orders", outcome="ack") == 0
    # Given back before it was handled (never received by the middleware): settled, and the
    # in-flight gauge does not go below zero.
    metrics.message_settled(Message.create("{}", "json", 1), "orders", Verdict(Action.ABANDON))
    assert sample("melange_messages_settled_total", queue="orders", outcome="abandon") == 1
    assert sample("melange_messages_in_flight", queue="orders") == 0
    # A retry and a dead letter count on their own counters as well.
    for action in (Action.RETRY, Action.DEAD_LETTER):
        message = Message.create("{}", "json", 1)
        metrics.message_received(message, "orders")
        metrics.message_settled(message, "orders", Verdict(action))
    assert sample("melange_messages_retried_total", queue="orders") == 1
    assert sample("melange_messages_dead_lettered_total", queue="orders") == 1
    assert sample("melange_end_to_end_latency_seconds_count", queue="orders", outcome="retry") == 1


def test_messages_never_settled_are_forgotten_past_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, max_tracked=3)

    def in_flight() -> float | None:
        return registry.get_sample_value("melange_messages_in_flight", {"queue": "orders"})

    stuck = [Message.create("{}", "json", 1) for _ in range(5)]
    with caplog.at_level("WARNING", logger="melange.observability"):
        for message in stuck:
            metrics.message_received(message, "orders")
    # The two oldest were never settled: the process no longer holds them or counts them.
    assert in_flight() == 3
    assert [r.getMessage().split()[2] for r in caplog.records] == [
        stuck[0].message_id,
        stuck[1].message_id,
    ]
    # The ones still remembered settle as usual and leave nothing in flight.
    for message in stuck[2:]:
        metrics.message_settled(message, "orders", ACK)
    assert in_flight() == 0
    assert registry.get_sample_value("melange_messages_received_total", {"queue": "orders"}) == 5
    with pytest.raises(ValueError, match="max_tracked"):
        PrometheusMetrics(CollectorRegistry(), max_tracked=0)
