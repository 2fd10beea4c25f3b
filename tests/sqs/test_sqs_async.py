"""The asyncio SQS/SNS backend on the moto server, beyond the conformance suite: wire
compatibility with the blocking backend both ways, leases, dead letters, batch refusals,
request costs and connection errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import botocore.config
import pytest

from melange.backends.sqs.backend import AWSBackend
from melange.exceptions import BackendConnectionError, BatchPublishError
from melange.models import FAILURE_REASON, Message, QueueWrapper
from melange.testing.conformance import receive

T = TypeVar("T")

SECRET = "do-not-print-this-secret-0123456789"


def run(backend: Any, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario`` on a new event loop, closing ``backend`` on that loop afterwards."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await backend.aclose()

    return asyncio.run(main())


async def receive_async(
    backend: Any, queue: QueueWrapper, count: int, timeout: float = 15.0
) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(
            await backend.retrieve_messages(queue, max_messages=count - len(got), wait_seconds=1)
        )
    return got


def rich_message(content: str, manifest: str = "OrderPlaced") -> Message:
    message = Message.create(content, manifest, 1)
    message.headers["correlation_id"] = "corr-1"
    message.headers["tenant"] = "acme"
    return message


def assert_same(sent: Message, got: Message) -> None:
    assert got.content == sent.content
    assert got.manifest == sent.manifest
    assert got.serializer_id == sent.serializer_id
    assert got.headers["tenant"] == "acme"
    assert got.headers["correlation_id"] == "corr-1"


def test_queue_messages_cross_between_the_async_and_the_blocking_backend(
    make_async_aws_backend: Callable[..., Any], aws_backend: AWSBackend, names: Any
) -> None:
    backend = make_async_aws_backend(wait_time_seconds=1)
    queue, _ = aws_backend.declare_queue(names.queue())
    from_async, from_blocking = rich_message('{"n": "é1"}'), rich_message('{"n": 2}')

    async def scenario() -> None:
        handle = await backend.get_queue(queue.name)
        await backend.publish_to_queue(from_async, handle)
        [got] = await asyncio.to_thread(receive, aws_backend, queue, 1)
        assert_same(from_async, got)
        await asyncio.to_thread(aws_backend.acknowledge, got)
        await asyncio.to_thread(aws_backend.publish_to_queue, from_blocking, queue)
        [back] = await receive_async(backend, handle, 1)
        assert_same(from_blocking, back)
        assert back.attempt == 1
        await backend.acknowledge(back)
        assert await backend.retrieve_messages(handle, wait_seconds=0) == []

    run(backend, scenario)


def test_an_aiobotocore_config_keeps_its_own_http_options(
    make_async_aws_backend: Callable[..., Any], aws_backend: AWSBackend, names: Any
) -> None:
    # An AioConfig's aiohttp settings (connector_args) merged with the backend's defaults,
    # which used to be a plain botocore Config and refused them with a TypeError.
    import aiobotocore.config

    tuned = aiobotocore.config.AioConfig(connector_args={"keepalive_timeout": 7})
    backend = make_async_aws_backend(wait_time_seconds=1, config=tuned)
    queue, _ = aws_backend.declare_queue(names.queue())
    sent = rich_message('{"n": 1}')

    async def scenario() -> None:
        handle = await backend.get_queue(queue.name)
        await backend.publish_to_queue(sent, handle)
        [got] = await receive_async(backend, handle, 1)
        assert_same(sent, got)
        await backend.acknowledge(got)
        assert backend.sqs_client.meta.config.connector_args == {"keepalive_timeout": 7}

    run(backend, scenario)


def test_topic_fan_out_with_a_filter_is_shared_by_both_backends(
    make_async_aws_backend: Callable[..., Any], aws_backend: AWSBackend, names: Any
) -> None:
    backend = make_async_aws_backend(wait_time_seconds=1)
    topic_name, every_name, placed_name = names.topic(), names.queue("all"), names.queue("placed")

    async def scenario() -> None:
        # Topology from the async backend, read by the blocking one, and the other way round.
        topic = await backend.declare_topic(topic_name)
        every, _ = await backend.declare_queue(every_name, topic)
        placed, _ = await asyncio.to_thread(
            aws_backend.declare_queue, placed_name, topic, filter_events=["OrderPlaced"]
        )
        batch = [rich_message('{"a": 1}'), rich_message('{"b": 2}', "OrderCancelled")]
        await backend.publish_batch_to_topic(batch, topic)
        await asyncio.to_thread(aws_backend.publish_to_topic, rich_message('{"c": 3}'), topic)
        got_every = await asyncio.to_thread(receive, aws_backend, every, 3)
        assert sorted(m.content for m in got_every) == ['{"a": 1}', '{"b": 2}', '{"c": 3}']
        got_placed = await receive_async(backend, placed, 2)
        assert sorted(m.content for m in got_placed) == ['{"a": 1}', '{"c": 3}']
        for message in got_placed:
            assert_same(rich_message(message.content), message)
        await backend.acknowledge_batch(got_placed)
        await asyncio.to_thread(aws_backend.acknowledge_batch, got_every)
        # Nothing else arrives: the filter held the cancelled order back.
        assert await backend.retrieve_messages(placed, wait_seconds=1) == []

    run(backend, scenario)


def test_extending_visibility_keeps_a_message_hidden_past_its_timeout(
    make_async_aws_backend: Callable[..., Any], names: Any
) -> None:
    backend = make_async_aws_backend(visibility_timeout=2, wait_time_seconds=1)

    async def scenario() -> None:
        queue, _ = await backend.declare_queue(names.queue())
        await backend.publish_to_queue(rich_message('{"lease": 1}'), queue)
        [message] = await receive_async(backend, queue, 1)
        assert backend.visibility_timeout_for(message) == 2.0
        await backend.extend_visibility(message, 8)
        await asyncio.sleep(3.5)  # past the 2 s lease it was received with
        assert await backend.retrieve_messages(queue, wait_seconds=1) == []
        await backend.acknowledge(message)

    run(backend, scenario)


def test_nack_with_a_delay_brings_the_message_back_later_with_a_higher_attempt(
    make_async_aws_backend: Callable[..., Any], names: Any
) -> None:
    backend = make_async_aws_backend(wait_time_seconds=1)

    async def scenario() -> None:
        queue, _ = await backend.declare_queue(names.queue())
        await backend.publish_to_queue(rich_message('{"nack": 1}'), queue)
        [message] = await receive_async(backend, queue, 1)
        released = time.monotonic()
        await backend.nack(message, delay=3)
        assert await backend.retrieve_messages(queue, wait_seconds=1) == []
        [again] = await receive_async(backend, queue, 1)
        assert time.monotonic() - released >= 2.5
        assert again.content == '{"nack": 1}'
        assert again.attempt == 2
        await backend.acknowledge(again)

    run(backend, scenario)


def test_dead_letter_moves_the_message_with_its_headers(
    make_async_aws_backend: Callable[..., Any], aws_backend: AWSBackend, names: Any
) -> None:
    backend = make_async_aws_backend(wait_time_seconds=1)
    queue_name, dlq_name = names.queue(), names.queue("dlq")

    async def scenario() -> None:
        queue, dlq = await backend.declare_queue(queue_name, dead_letter_queue_name=dlq_name)
        assert dlq is not None
        sent = rich_message('{"poison": true}')
        await backend.publish_to_queue(sent, queue)
        [message] = await receive_async(backend, queue, 1)
        moved = await backend.dead_letter(
            message, {FAILURE_REASON: "ValueError: boom", "failure_consumer": "billing"}
        )
        assert moved is True
        assert await backend.retrieve_messages(queue, wait_seconds=1) == []
        # The blocking backend reads the copy as the async one wrote it.
        [copy] = await asyncio.to_thread(receive, aws_backend, dlq, 1)
        assert_same(sent, copy)
        assert copy.headers[FAILURE_REASON] == "ValueError: boom"
        assert copy.headers["failure_consumer"] == "billing"
        await asyncio.to_thread(aws_backend.acknowledge, copy)
        # Without a redrive policy there is nowhere to move it.
        plain, _ = await backend.declare_queue(names.queue("plain"))
        await backend.publish_to_queue(rich_message("{}"), plain)
        [other] = await receive_async(backend, plain, 1)
        assert await backend.dead_letter(other, {FAILURE_REASON: "x"}) is False
        await backend.acknowledge(other)

    run(backend, scenario)


def test_batch_refusals_are_reported_together_and_the_rest_is_sent(
    make_async_aws_backend: Callable[..., Any], sns: Any, names: Any
) -> None:
    backend = make_async_aws_backend(wait_time_seconds=1)
    # A FIFO topic without content-based deduplication refuses entries without a dedup id.
    topic_name, queue_name = names.topic(fifo=True), names.queue(fifo=True)
    sns.create_topic(Name=topic_name, Attributes={"FifoTopic": "true"})

    async def scenario() -> None:
        topic = await backend.get_topic(topic_name)
        queue, _ = await backend.declare_queue(queue_name, topic)
        batch = []
        for i in range(3):
            message = Message.create(f'{{"i": {i}}}', "json", 1)
            message.group_id = "g"
            message.deduplication_id = None if i == 1 else f"d{i}"
            batch.append(message)
        with pytest.raises(BatchPublishError) as caught:
            await backend.publish_batch_to_topic(batch, topic)
        assert list(caught.value.failures) == [1]
        got = await receive_async(backend, queue, 2)
        assert [m.content for m in got] == ['{"i": 0}', '{"i": 2}']
        await backend.acknowledge_batch(got)

    run(backend, scenario)


def test_requests_are_batched_as_by_the_blocking_backend(
    make_async_aws_backend: Callable[..., Any],
    names: Any,
    count_requests: Callable[..., Any],
) -> None:
    backend = make_async_aws_backend(wait_time_seconds=1)

    async def scenario() -> None:
        queue, _ = await backend.declare_queue(names.queue())
        counter = count_requests(backend.sqs_client)
        await backend.publish_to_queue(rich_message('{"one": 1}'), queue)
        assert counter.operations == ["SendMessage"]
        counter.reset()
        await backend.publish_batch_to_queue(
            [rich_message(f'{{"n": {i}}}') for i in range(25)], queue
        )
        assert counter.operations == ["SendMessageBatch"] * 3
        got: list[Message] = []
        while len(got) < 26:
            counter.reset()
            received = await backend.retrieve_messages(queue, wait_seconds=1)
            assert counter.operations == ["ReceiveMessage"]
            assert 0 < len(received) <= 10
            got.extend(received)
        counter.reset()
        await backend.acknowledge_batch(got)
        assert counter.operations == ["DeleteMessageBatch"] * 3
        counter.reset()
        assert await backend.retrieve_messages(queue, wait_seconds=0) == []
        assert counter.operations == ["ReceiveMessage"]

    run(backend, scenario)


def test_an_unreachable_endpoint_is_a_clear_error_without_secrets(
    async_aws_class: type[Any],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = async_aws_class(
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key=SECRET,
        aws_session_token=SECRET,
        config=botocore.config.Config(
            connect_timeout=1, retries={"total_max_attempts": 1, "mode": "standard"}
        ),
    )
    assert SECRET not in repr(backend)

    async def scenario() -> None:
        with pytest.raises(BackendConnectionError) as caught:
            await backend.get_queue("orders")
        text = str(caught.value)
        assert "looking up queue 'orders'" in text
        assert "cannot reach AWS" in text
        assert SECRET not in text

    run(backend, scenario)


def test_closed_backend_refuses_calls_and_the_package_exposes_it_lazily(
    make_async_aws_backend: Callable[..., Any], async_aws_class: type[Any]
) -> None:
    import melange.backends.sqs as package

    assert package.AsyncAWSBackend is async_aws_class
    assert package.AsyncLocalSQSBackend.name == "sqs"
    backend = make_async_aws_backend()
    assert backend.capabilities.name == "sqs"
    assert backend.capabilities.extend_visibility

    async def scenario() -> None:
        await backend.connect()
        assert backend.sqs_client is not None
        await backend.aclose()
        assert backend.sqs_client is None
        with pytest.raises(Exception, match="closed"):
            await backend.get_queue("anything")

    run(backend, scenario)


def test_local_backend_reaches_the_endpoint_by_host_and_port(
    sqs_endpoint: Any, names: Any, async_aws_class: type[Any]
) -> None:
    from melange.backends.sqs import AsyncLocalSQSBackend

    backend = AsyncLocalSQSBackend(
        host=sqs_endpoint.host, port=sqs_endpoint.port, wait_time_seconds=1
    )
    assert backend.endpoint_url == f"http://{sqs_endpoint.host}:{sqs_endpoint.port}"

    async def scenario() -> None:
        queue, _ = await backend.declare_queue(names.queue("local"))
        await backend.publish_to_queue(rich_message('{"local": 1}'), queue)
        [got] = await receive_async(backend, queue, 1)
        assert got.content == '{"local": 1}'
        await backend.acknowledge(got)

    run(backend, scenario)


def test_the_core_and_the_blocking_backend_never_import_aiobotocore() -> None:
    import subprocess
    import sys

    code = (
        "import sys, melange, melange.aio, melange.backends.sqs\n"
        "from melange.backends.sqs import AWSBackend\n"
        "assert 'aiobotocore' not in sys.modules, 'aiobotocore imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
