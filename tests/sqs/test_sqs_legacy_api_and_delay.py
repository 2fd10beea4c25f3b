"""On SQS: the backend-level API 7.2.0 users call (queue handles whose URL answers
``.attributes``, ``declare_queue`` returning the queue and its dead-letter queue, FIFO keys as
keywords of ``publish_to_queue``), and the per-message delay: honoured on standard queues,
refused on FIFO queues, past 15 minutes and on SNS topics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Names
from melange.aio import AsyncQueuePublisher
from melange.backends.sqs.backend import AWSBackend
from melange.exceptions import BackendError, ConfigurationError
from melange.models import Message
from melange.serializers import JsonSerializer
from publish_delay_support import (
    PUBLISHERS,
    check_fifo_delay_refused,
    check_fifo_keywords_on_the_backend,
    check_invalid_delays_refused,
    check_queue_delay,
    publish,
    unique,
)


def test_a_fifo_queue_handle_reads_its_sqs_attributes(
    aws_backend: AWSBackend, names: Names
) -> None:
    name = names.queue(fifo=True)
    aws_backend.declare_queue(name)

    attributes = aws_backend.get_queue(name).unwrapped_obj.attributes

    assert attributes["FifoQueue"] == "true"
    assert attributes["ContentBasedDeduplication"] == "true"
    assert attributes["QueueArn"].endswith(":" + name)


def test_a_standard_queue_handle_reads_attributes_without_fifo(
    aws_backend: AWSBackend, names: Names
) -> None:
    queue, dead_letter = aws_backend.declare_queue(names.queue())

    assert dead_letter is None
    assert "FifoQueue" not in queue.unwrapped_obj.attributes


@pytest.mark.parametrize("fifo", [False, True])
def test_declare_queue_returns_the_queue_and_its_dead_letter_queue_with_attributes(
    aws_backend: AWSBackend, names: Names, fifo: bool
) -> None:
    queue, dead_letter = aws_backend.declare_queue(
        names.queue(fifo=fifo), dead_letter_queue_name=names.queue("dlq", fifo=fifo)
    )

    assert dead_letter is not None
    dlq_attributes = dead_letter.unwrapped_obj.attributes
    redrive = json.loads(queue.unwrapped_obj.attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_attributes["QueueArn"]
    if fifo:
        # As 7.2.0 made them: both FIFO, both with content-based deduplication.
        assert dlq_attributes["FifoQueue"] == "true"
        assert dlq_attributes["ContentBasedDeduplication"] == "true"
    else:
        assert "FifoQueue" not in dlq_attributes


def test_attributes_are_read_once_and_reload_reads_them_again(
    aws_backend: AWSBackend, names: Names, sqs: Any
) -> None:
    queue, _ = aws_backend.declare_queue(names.queue(), visibility_timeout=30)
    url = queue.unwrapped_obj
    assert url.attributes["VisibilityTimeout"] == "30"

    sqs.set_queue_attributes(QueueUrl=str(url), Attributes={"VisibilityTimeout": "45"})

    assert url.attributes["VisibilityTimeout"] == "30"
    url.reload()
    assert url.attributes["VisibilityTimeout"] == "45"


def test_an_asyncio_handle_says_it_cannot_read_attributes(
    make_async_aws_backend: Callable[..., Any], names: Names
) -> None:
    async def scenario() -> Any:
        backend = make_async_aws_backend()
        try:
            queue, _ = await backend.declare_queue(names.queue())
            return queue.unwrapped_obj
        finally:
            await backend.aclose()

    url = asyncio.run(scenario())
    with pytest.raises(BackendError, match="only handles of the blocking AWSBackend"):
        _ = url.attributes


def test_fifo_keys_as_keywords_of_publish_to_queue_are_used(aws_backend: AWSBackend) -> None:
    check_fifo_keywords_on_the_backend(aws_backend)


def test_a_batch_refuses_one_deduplication_id_for_all_its_messages(
    aws_backend: AWSBackend, names: Names
) -> None:
    queue, _ = aws_backend.declare_queue(names.queue(fifo=True))
    messages = [Message.create(str(i), "text", 1) for i in range(2)]

    with pytest.raises(ConfigurationError, match="a batch would keep only its first"):
        aws_backend.publish_batch_to_queue(
            messages, queue, message_group_id="g", message_deduplication_id="same"
        )


# -- per-message delay ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_delayed_queue_message_is_held_back_on_sqs(aws_backend: AWSBackend, how: str) -> None:
    check_queue_delay(how, aws_backend, aws_backend, delay=2, early=1)


def test_the_asyncio_backend_delays_a_message_too(
    aws_backend: AWSBackend, make_async_aws_backend: Callable[..., Any], names: Names
) -> None:
    queue, _ = aws_backend.declare_queue(names.queue())

    async def scenario() -> None:
        backend = make_async_aws_backend()
        try:
            await AsyncQueuePublisher(JsonSerializer(), backend).publish(
                queue.name, {"n": 1}, delay_seconds=2
            )
        finally:
            await backend.aclose()

    asyncio.run(scenario())
    assert aws_backend.retrieve_messages(queue, wait_seconds=1) == []
    got = aws_backend.retrieve_messages(queue, wait_seconds=5)
    assert [m.content for m in got] == ['{"n": 1}']


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_delay_on_a_fifo_queue_is_refused_on_sqs(aws_backend: AWSBackend, how: str) -> None:
    check_fifo_delay_refused(how, aws_backend, aws_backend, topics=False)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_invalid_and_too_long_delays_are_refused_on_sqs(aws_backend: AWSBackend, how: str) -> None:
    check_invalid_delays_refused(how, aws_backend, aws_backend)
    queue, _ = aws_backend.declare_queue(unique("too-long"))
    try:
        with pytest.raises(ConfigurationError, match="900 seconds at most"):
            publish(how, aws_backend, queue.name, {"n": 1}, delay_seconds=901)
    finally:
        aws_backend.delete_queue(queue)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_a_delayed_topic_message_is_refused_on_sns(
    aws_backend: AWSBackend, names: Names, how: str
) -> None:
    topic = aws_backend.declare_topic(names.topic())
    queue, _ = aws_backend.declare_queue(names.queue(), topic)

    with pytest.raises(ConfigurationError, match="cannot delay a topic message"):
        publish(how, aws_backend, topic.name, {"n": 1}, topic=True, delay_seconds=5)
    with pytest.raises(ConfigurationError, match="SNS cannot delay"):
        aws_backend.publish_to_topic(Message.create("x", "text", 1), topic, delay_seconds=5)
    assert aws_backend.retrieve_messages(queue, wait_seconds=1) == []
    assert not aws_backend.capabilities.delayed_topic_publish
    assert aws_backend.capabilities.max_publish_delay == 900
