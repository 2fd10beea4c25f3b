"""Hostile messages under every driver, on every backend they can reach: each is poison for
itself only (dead-lettered with a reason that says what was wrong), the messages around it
are processed, and the loop keeps going.

- a body nested deeper than a JSON parser goes (``"[" * 2000``, about 2 KB);
- a serializer id that is not a number (sent by another producer, on the brokers);
- a message id the deduplication cache cannot store (a NUL character, on PostgreSQL): a
  fault of the message, not an outage of the cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from drivers import Broker, Driver, json_message, payload_of, wait_for

from melange import Consumer, Message
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.models import FAILURE_REASON
from service_check import require_service

_RABBITMQ = pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)
_SQS = pytest.param("sqs", marks=pytest.mark.sqs)
_KAFKA = pytest.param("kafka", marks=pytest.mark.kafka)
ON_EVERY_BACKEND = pytest.mark.parametrize(
    "backend", ["memory", "sqlite", _RABBITMQ, _SQS, _KAFKA], indirect=True
)
#: Backends whose messages keep the id their publisher gave them (SQS assigns its own).
PUBLISHER_IDS = pytest.mark.parametrize(
    "backend", ["memory", "sqlite", _RABBITMQ, _KAFKA], indirect=True
)
ON_THE_BROKERS = pytest.mark.parametrize("backend", [_RABBITMQ, _SQS, _KAFKA], indirect=True)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEEP = "[" * 2000


def run_until_settled(
    driver: Driver, broker: Broker, queue: str, dispatcher: Any, dead: int, acked: int
) -> None:
    loop = driver.run_loop(dispatcher, queue, 1)
    try:
        wait_for(
            lambda: (
                dispatcher.stats.dead_lettered == dead and dispatcher.stats.acknowledged == acked
            ),
            30,
            f"{dead} message(s) dead-lettered and {acked} acknowledged",
        )
    finally:
        loop.stop()


@ON_EVERY_BACKEND
def test_a_body_nested_past_the_parsers_depth_is_poison_and_its_batch_is_processed(
    driver: Driver, broker: Broker
) -> None:
    queue, dlq = broker.queue()
    broker.publish(queue, [{"n": 0}])
    if broker.kind in ("sqs", "rabbitmq"):
        # As another producer sends it: the raw body, not inside Melange's envelope.
        _send_raw(broker, queue, DEEP, "1")
    else:
        broker.publish_raw(queue, [Message(None, DEEP, serializer_id=1, manifest="json")])
    broker.publish(queue, [{"n": 1}, {"n": 2}])
    handled: list[Any] = []
    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(handled.append)])
    run_until_settled(driver, broker, queue, dispatcher, dead=1, acked=3)
    assert sorted(p["n"] for p in handled) == [0, 1, 2]
    [dead] = broker.take(dlq, expected=1)
    assert dead.content == DEEP
    assert dead.headers[FAILURE_REASON].startswith("undecodable message")
    assert dispatcher.stats.poison == 1
    broker.assert_empty(queue)


def _send_raw(broker: Broker, queue: str, body: str, raw_id: str) -> None:
    """Send ``body`` as another producer would, with ``serializer_id`` set to ``raw_id``."""
    backend: Any = broker.backend
    if broker.kind == "sqs":
        url = str(backend.get_queue(queue).unwrapped_obj)
        kind = "Number" if raw_id.isdigit() else "String"
        backend.sqs_client.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageAttributes={"serializer_id": {"DataType": kind, "StringValue": raw_id}},
        )
        return
    if broker.kind == "kafka":
        from melange.backends.kafka import wire

        record = Message(None, body, manifest="json")
        headers: wire.RecordHeaders = [
            (wire.MESSAGE_ID_HEADER, uuid.uuid4().hex),
            (wire.SERIALIZER_HEADER, raw_id),
            (wire.MANIFEST_HEADER, "json"),
        ]
        backend.produce(queue, [(record, headers)])
        return
    import pika

    host, port = require_service("rabbitmq")
    connection = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    try:
        channel = connection.channel()
        channel.basic_publish(
            "",
            queue,
            body.encode(),
            pika.BasicProperties(
                message_id=uuid.uuid4().hex,
                delivery_mode=2,
                headers={
                    "serializer_id": int(raw_id) if raw_id.isdigit() else raw_id,
                    "manifest": "json",
                },
            ),
        )
    finally:
        connection.close()


@ON_THE_BROKERS
def test_a_serializer_id_that_is_not_a_number_is_poison_that_says_so(
    driver: Driver, broker: Broker
) -> None:
    queue, dlq = broker.queue()
    _send_raw(broker, queue, '{"n": -1}', "json")
    broker.publish(queue, [{"n": 1}])
    handled: list[Any] = []
    dispatcher = driver.make(backend=broker.backend, consumers=[Consumer(handled.append)])
    run_until_settled(driver, broker, queue, dispatcher, dead=1, acked=1)
    assert handled == [{"n": 1}]
    [dead] = broker.take(dlq, expected=1)
    reason = dead.headers[FAILURE_REASON]
    assert "'json' is not a whole number" in reason
    assert "no serializer id" not in reason
    broker.assert_empty(queue)


@pytest.fixture
def pg_cache() -> Iterator[SQLDeduplicationCache]:
    require_service("postgres")
    table = f"melange_hostile_{uuid.uuid4().hex[:10]}"
    cache = SQLDeduplicationCache(PG_URL, table=table, timeout=5)
    yield cache
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    cache.close()


@PUBLISHER_IDS
def test_a_message_id_the_cache_cannot_store_is_poison_not_an_outage(
    driver: Driver, broker: Broker, pg_cache: SQLDeduplicationCache
) -> None:
    queue, dlq = broker.queue()
    bad = json_message({"n": -1})
    bad.message_id = "nul\x00id"
    broker.publish_raw(queue, [json_message({"n": 0}), bad, json_message({"n": 1})])
    handled: list[Any] = []
    dispatcher = driver.make(
        backend=broker.backend,
        cache=pg_cache,
        consumers=[Consumer(handled.append, name="dedup")],
    )
    run_until_settled(driver, broker, queue, dispatcher, dead=1, acked=2)
    assert sorted(p["n"] for p in handled) == [0, 1]
    [dead] = broker.take(dlq, expected=1)
    assert payload_of(dead) == {"n": -1}
    reason = dead.headers[FAILURE_REASON]
    assert "InvalidDeduplicationKeyError" in reason
    assert "NUL" in reason
    assert dispatcher.stats.retried == 0
    broker.assert_empty(queue)
