"""The claim check on the in-memory broker: thresholds, the wire format, references that
cannot be read, payloads that do not match, and what a consumer without it does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from claimcheck_support import Broker, Recorder, Settlements, consume, large_payload

from melange.aio import AsyncQueuePublisher
from melange.backends.interfaces import BackendCapabilities
from melange.claimcheck import (
    HEADROOM,
    ClaimCheck,
    DirectoryPayloadStore,
    InvalidReferenceError,
    PayloadMissingError,
    PayloadStoreError,
    PayloadUnreadableError,
)
from melange.claimcheck.wire import PLACEHOLDER, Reference
from melange.dispatch.decisions import Poison, decode
from melange.dispatch.policy import FailurePolicy
from melange.exceptions import SerializationError
from melange.models import CLAIM_CHECK, CLAIM_CHECK_SERIALIZER_ID, FAILURE_REASON, Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers.json import JsonSerializer
from melange.serializers.registry import SerializerRegistry

KB = 1024


@pytest.fixture
def broker(make_broker: Callable[[str], Broker]) -> Broker:
    return make_broker("memory")  # 256 KiB size limit


@pytest.fixture
def store(tmp_path: Path) -> DirectoryPayloadStore:
    return DirectoryPayloadStore(tmp_path / "payloads")


def _key(message: Message) -> str:
    return Reference.decode(message.headers[CLAIM_CHECK]).key


def test_the_threshold_is_the_backends_limit_less_headroom_unless_set(
    store: DirectoryPayloadStore,
) -> None:
    sqs = BackendCapabilities(name="sqs", persistent=True, fifo=True, max_message_size=256 * KB)
    unlimited = BackendCapabilities(name="x", persistent=True, fifo=False)
    assert ClaimCheck(store).limit_for(sqs) == 256 * KB - HEADROOM
    assert ClaimCheck(store).limit_for(unlimited) is None
    assert ClaimCheck(store, threshold=10).limit_for(unlimited) == 10
    limit = 256 * KB - HEADROOM
    below = Message.create("x" * (limit - 100), "json", 1, {"h": "v"})
    above = Message.create("x" * (limit + 1), "json", 1, {})
    multibyte = Message.create("é" * (limit // 2 + 1), "json", 1, {})  # 2 bytes a character
    assert not ClaimCheck(store).wants(below, sqs)
    assert ClaimCheck(store).wants(above, sqs)
    assert ClaimCheck(store).wants(multibyte, sqs)
    assert not ClaimCheck(store).wants(above, unlimited)
    with pytest.raises(ValueError):
        ClaimCheck(store, threshold=-1)


def test_the_reference_keeps_the_envelope_and_a_received_reference_is_not_stored_again(
    broker: Broker, store: DirectoryPayloadStore
) -> None:
    queue, _ = broker.queue()
    cc = ClaimCheck(store)
    publisher = QueuePublisher(JsonSerializer(), broker.backend, claim_check=cc)
    sent = publisher.publish(queue, large_payload(300 * KB), headers={"tenant": "a"})
    assert sent.content == PLACEHOLDER and sent.serializer_id == CLAIM_CHECK_SERIALIZER_ID
    assert sent.headers["tenant"] == "a" and sent.manifest == "json"
    fields = json.loads(sent.headers[CLAIM_CHECK])
    assert fields["v"] == 1 and fields["serializer"] == 1 and fields["remove"] == "ack"
    assert fields["size"] > 300 * KB and len(fields["sha256"]) == 64
    assert not cc.wants(sent, broker.backend.capabilities)  # a reference is never re-stored


def test_a_topic_payload_and_one_without_removal_on_ack_are_left_to_their_lifetime(
    broker: Broker, store: DirectoryPayloadStore
) -> None:
    topic = broker.topic()
    sent = TopicPublisher(JsonSerializer(), broker.backend, claim_check=ClaimCheck(store)).publish(
        topic, large_payload(300 * KB)
    )
    assert json.loads(sent.headers[CLAIM_CHECK])["remove"] == "expire"
    queue, _ = broker.queue()
    kept = ClaimCheck(store, remove_on_ack=False)
    sent = QueuePublisher(JsonSerializer(), broker.backend, claim_check=kept).publish(
        queue, large_payload(300 * KB)
    )
    recorder = Recorder()
    assert consume(
        "threaded",
        broker.backend,
        queue,
        recorder.consumer(),
        lambda: bool(recorder.payloads),
        claim_check=kept,
    )
    assert store.get(_key(sent))  # acknowledged, still there


def test_a_batch_publish_stores_each_large_message(
    broker: Broker, store: DirectoryPayloadStore
) -> None:
    queue, _ = broker.queue()
    cc = ClaimCheck(store)
    items = [large_payload(300 * KB, "a"), {"small": True}, large_payload(300 * KB, "b")]
    sent = QueuePublisher(JsonSerializer(), broker.backend, claim_check=cc).publish_batch(
        queue, items
    )
    assert [CLAIM_CHECK in m.headers for m in sent] == [True, False, True]
    recorder = Recorder()
    assert consume(
        "asyncio",
        broker.backend,
        queue,
        recorder.consumer(),
        lambda: len(recorder.payloads) == 3,
        claim_check=cc,
    )
    assert sorted(recorder.payloads, key=str) == sorted(items, key=str)


def test_a_payload_that_does_not_match_its_reference_is_retried_then_dead_lettered(
    broker: Broker, store: DirectoryPayloadStore
) -> None:
    queue, dlq = broker.queue()
    cc = ClaimCheck(store)
    sent = asyncio.run(
        AsyncQueuePublisher(JsonSerializer(), broker.backend, claim_check=cc).publish(
            queue, large_payload(300 * KB)
        )
    )
    store.put(_key(sent), b'{"tampered": true}')
    with pytest.raises(PayloadUnreadableError):
        cc.fetch(sent)
    recorder, settlements = Recorder(), Settlements()
    assert consume(
        "threaded",
        broker.backend,
        queue,
        recorder.consumer(),
        lambda: "dead_letter" in settlements.actions(),
        claim_check=cc,
        middleware=[settlements],
    )
    assert settlements.actions() == ["retry", "dead_letter"] and recorder.payloads == []
    [dead] = broker.dead_letters(dlq)
    assert "does not match its reference" in dead.headers[FAILURE_REASON]


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        '{"v":2,"key":"k"}',
        '{"v":1,"key":"../../etc/passwd","size":1,"sha256":"x","serializer":1,"remove":"ack"}',
        '{"v":1,"key":"20260101-abc","size":"1","sha256":"x","serializer":1,"remove":"ack"}',
    ],
)
def test_a_reference_that_cannot_be_read_is_poison_dead_lettered_at_once(
    broker: Broker, store: DirectoryPayloadStore, header: str
) -> None:
    with pytest.raises(InvalidReferenceError):
        Reference.decode(header)
    assert issubclass(InvalidReferenceError, SerializationError)
    queue, dlq = broker.queue()
    message = Message.create(PLACEHOLDER, "json", CLAIM_CHECK_SERIALIZER_ID, {CLAIM_CHECK: header})
    broker.backend.publish_to_queue(message, broker.backend.get_queue(queue))
    recorder, settlements = Recorder(), Settlements()
    assert consume(
        "asyncio",
        broker.backend,
        queue,
        recorder.consumer(),
        lambda: bool(settlements.verdicts),
        claim_check=ClaimCheck(store),
        middleware=[settlements],
    )
    assert settlements.actions() == ["dead_letter"] and recorder.payloads == []
    [dead] = broker.dead_letters(dlq)
    assert dead.headers[FAILURE_REASON].startswith("undecodable message: claim check")


def test_a_consumer_unaware_of_claim_checks_reads_the_reserved_serializer_id_as_unknown() -> None:
    # What a Melange release without the claim check (or any reader that ignores the header)
    # sees: a serializer id no registry holds, never the placeholder decoded as a payload.
    message = Message.create(PLACEHOLDER, "json", CLAIM_CHECK_SERIALIZER_ID, {})
    registry = SerializerRegistry.coerce(JsonSerializer())
    poison = decode(message, registry)
    assert isinstance(poison, Poison) and poison.exception_type == "UnknownSerializerError"
    message.headers[CLAIM_CHECK] = "{}"
    poison = decode(message, registry)
    assert isinstance(poison, Poison) and "no claim check" in poison.reason


def test_fetch_leaves_the_received_message_as_it_was(store: DirectoryPayloadStore) -> None:
    cc = ClaimCheck(store, threshold=0)
    original = Message.create(json.dumps({"a": 1}), "json", 1, {"h": "v"})
    sent = cc.check_in(original)
    resolved = cc.fetch(sent)
    assert resolved.content == original.content and resolved.serializer_id == 1
    assert resolved.headers == {**original.headers}
    assert CLAIM_CHECK in sent.headers and sent.content == PLACEHOLDER
    store.delete(_key(sent))
    with pytest.raises(PayloadMissingError):
        cc.fetch(sent)


def test_a_store_outage_is_retried_and_the_message_delivered_once_the_store_is_back(
    broker: Broker, tmp_path: Path
) -> None:
    directory = tmp_path / "shared"
    store = DirectoryPayloadStore(directory)
    cc = ClaimCheck(store)
    queue, _ = broker.queue()
    payload = large_payload(300 * KB)
    QueuePublisher(JsonSerializer(), broker.backend, claim_check=cc).publish(queue, payload)
    parked = tmp_path / "parked"
    directory.rename(parked)  # the volume is gone: reads fail with an OS error
    directory.write_text("not a directory")
    recorder, settlements = Recorder(), Settlements()

    def store_back_after_first_retry() -> bool:
        if settlements.actions() == ["retry"] and directory.is_file():
            directory.unlink()
            parked.rename(directory)
        return bool(recorder.payloads)

    assert consume(
        "threaded",
        broker.backend,
        queue,
        recorder.consumer(),
        store_back_after_first_retry,
        claim_check=cc,
        middleware=[settlements],
        # Attempts to spare: the store comes back while the message waits for its retry.
        policy=FailurePolicy(max_attempts=5, initial_delay=0.5, jitter=0.0),
    )
    assert settlements.actions()[0] == "retry"
    assert "PayloadStoreError" in settlements.verdicts[0].reason
    assert recorder.payloads == [payload]


def test_a_publish_whose_payload_cannot_be_stored_sends_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    store = DirectoryPayloadStore(tmp_path / "payloads")
    (tmp_path / "payloads").rmdir()
    (tmp_path / "payloads").write_text("not a directory")
    queue, _ = broker.queue()
    publisher = QueuePublisher(JsonSerializer(), broker.backend, claim_check=ClaimCheck(store))
    with pytest.raises(PayloadStoreError):
        publisher.publish(queue, large_payload(300 * KB))
    assert broker.backend.retrieve_messages(broker.backend.get_queue(queue)) == []
