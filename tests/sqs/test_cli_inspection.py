"""``melange queues`` and ``melange dlq`` on SQS (the moto server of conftest.py): queue
attributes, dead-letter source queues, peeking, redrive and purge."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from conftest import Endpoint, Names
from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.cli import cli
from melange.serializers.json import JsonSerializer

HOSTILE = "\x1b]0;owned\x07"


class CardDeclined(Exception):
    pass


@dataclass
class Setup:
    url: str
    queue: str
    dlq: str
    topic: str


def backend_url(endpoint: Endpoint) -> str:
    """The ``sqs://`` URL of the test endpoint, credentials included."""
    key = endpoint.credentials.get("aws_access_key_id", "")
    secret = endpoint.credentials.get("aws_secret_access_key", "")
    auth = f"{quote(key, safe='')}:{quote(secret, safe='')}@" if key else ""
    query = f"region={endpoint.region}"
    if endpoint.sqs_url:
        query += f"&endpoint_url={quote(endpoint.sqs_url, safe='')}"
    return f"sqs://{auth}?{query}"


def melange(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def setup(
    sqs_endpoint: Endpoint, make_aws_backend: Callable[..., AWSBackend], names: Names, sqs: Any
) -> Setup:
    """Two payments dead-lettered by the failure policy, one message left in the DLQ the way
    SQS's own redrive leaves it (no failure headers), one message ready and one delayed."""
    backend = make_aws_backend(wait_time_seconds=1)
    queue, dlq, topic = names.queue("payments"), names.queue("payments-dlq"), names.topic()
    factory = MessagingBackendFactory(backend)
    factory.init_topic(topic)
    factory.init_queue(queue, dead_letter_queue_name=dlq)
    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish(queue, {"order": 1, "note": HOSTILE})
    publisher.publish(queue, {"order": 2})

    def charge(payment: dict[str, object]) -> None:
        raise CardDeclined(f"order {payment['order']} {payment.get('note', '')}")

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(charge, name="billing.charge")],
        failure_policy=FailurePolicy(max_attempts=1),
    )
    dispatcher.consume_event(queue)
    assert dispatcher.stats.dead_lettered == 2
    dlq_url = sqs.get_queue_url(QueueName=dlq)["QueueUrl"]
    sqs.send_message(QueueUrl=dlq_url, MessageBody='{"order": 5}')
    publisher.publish(queue, {"order": 3})
    queue_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody='{"order": 4}', DelaySeconds=600)
    return Setup(backend_url(sqs_endpoint), queue, dlq, topic)


def test_stats_are_the_queue_attributes(setup: Setup) -> None:
    code, out = melange(
        "queues", "stats", setup.queue, setup.dlq, "--json", "--backend-url", setup.url
    )

    assert code == 0, out
    counts = {q["name"]: q for q in json.loads(out)["queues"]}
    assert counts[setup.queue] == {
        "name": setup.queue,
        "ready": 1,
        "in_flight": 0,
        "delayed": 1,
        "total": 2,
    }
    assert counts[setup.dlq]["ready"] == 3


def test_list_names_queues_and_topics(setup: Setup) -> None:
    code, out = melange("queues", "list", "--json", "--backend-url", setup.url)

    assert code == 0, out
    document = json.loads(out)
    listed = {q["name"]: q["messages"] for q in document["queues"]}
    assert listed[setup.queue] == 2 and listed[setup.dlq] == 3
    assert setup.topic in document["topics"]


def test_dlq_show_names_the_source_queue_and_escapes_control_characters(setup: Setup) -> None:
    code, table = melange("dlq", "show", setup.dlq, "--backend-url", setup.url)
    code_json, out = melange("dlq", "show", setup.dlq, "--json", "--backend-url", setup.url)

    assert code == 0, table
    assert f"dead letters of: {setup.queue}" in table
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]0;owned\\x07" in table
    assert "3 of 3 message(s) shown" in table
    assert code_json == 0, out
    assert "\x1b" not in out
    document = json.loads(out)
    assert document["sources"] == [setup.queue]
    by_order = {json.loads(m["body"])["order"]: m for m in document["messages"]}
    assert sorted(by_order) == [1, 2, 5]
    assert by_order[1]["from_queue"] == setup.queue
    assert HOSTILE in by_order[1]["reason"]  # exact once decoded
    assert by_order[5]["from_queue"] is None
    # The peek gave every message back at once.
    code, out = melange("queues", "stats", setup.dlq, "--json", "--backend-url", setup.url)
    assert json.loads(out)["queues"][0]["ready"] == 3


def test_peeking_a_queue_with_a_redrive_policy_is_refused(setup: Setup) -> None:
    code, out = melange("dlq", "show", setup.queue, "--backend-url", setup.url)

    assert code == 1
    assert "RedrivePolicy" in out and "maxReceiveCount" in out


def test_redrive_sends_messages_without_failure_headers_to_the_only_source(
    setup: Setup,
) -> None:
    code, out = melange("dlq", "redrive", setup.dlq, "--json", "--backend-url", setup.url)

    assert code == 0, out
    assert json.loads(out) == {"queue": setup.dlq, "moved": 3, "left": 0, "duplicates": 0}
    code, out = melange(
        "queues", "stats", setup.queue, setup.dlq, "--json", "--backend-url", setup.url
    )
    counts = {q["name"]: q for q in json.loads(out)["queues"]}
    assert counts[setup.queue]["ready"] == 4
    assert counts[setup.dlq]["total"] == 0


def test_purge(setup: Setup) -> None:
    code, out = melange("queues", "purge", setup.queue, "-y", "--json", "--backend-url", setup.url)

    assert code == 0, out
    assert json.loads(out) == {"queue": setup.queue, "deleted": 2}
    code, out = melange("queues", "stats", setup.queue, "--json", "--backend-url", setup.url)
    assert json.loads(out)["queues"][0]["total"] == 0


def test_a_missing_queue_is_named(setup: Setup) -> None:
    code, out = melange("queues", "stats", setup.queue + "-nope", "--backend-url", setup.url)

    assert code == 1
    assert setup.queue + "-nope" in out
    assert "testing" not in out  # no credential of the URL
