"""Hostile settings on SQS and SNS: names and numbers AWS would refuse are refused before any
request, saying what is allowed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqs.backend import AWSBackend
from melange.exceptions import ConfigurationError

BAD_QUEUE_NAMES = [
    "bad\nname",
    "a b",
    "é",
    "dots.in.name",
    ".fifo",
    "x" * 81,
    "x" * 76 + ".fifo",
]


@pytest.mark.parametrize("name", BAD_QUEUE_NAMES)
def test_a_queue_name_sqs_refuses_is_refused_before_any_request(
    aws_backend: AWSBackend, count_requests: Callable[..., Any], name: str
) -> None:
    counter = count_requests(aws_backend.sqs_client, aws_backend.sns_client)
    with pytest.raises(ConfigurationError, match="ASCII letters, digits, '-' and '_'"):
        MessagingBackendFactory(aws_backend).init_queue(name)
    with pytest.raises(ConfigurationError, match="1 to 80 characters"):
        aws_backend.declare_queue("fine", dead_letter_queue_name=name)
    assert counter.total == 0


@pytest.mark.parametrize("name", ["bad\nname", "a b", "t" * 257, "dots.in.name"])
def test_a_topic_name_sns_refuses_is_refused_before_any_request(
    aws_backend: AWSBackend, count_requests: Callable[..., Any], name: str
) -> None:
    counter = count_requests(aws_backend.sqs_client, aws_backend.sns_client)
    with pytest.raises(ConfigurationError, match="1 to 256 characters"):
        MessagingBackendFactory(aws_backend).init_topic(name)
    assert counter.total == 0


def test_names_within_the_rules_are_taken(aws_backend: AWSBackend, names: Any) -> None:
    longest = names.queue("x" * 60)[:80]
    names.queues.append(longest)
    fifo = names.queue("f", fifo=True)
    for name in (longest, fifo):
        MessagingBackendFactory(aws_backend).init_queue(name)
        assert aws_backend.get_queue(name).name == name


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("visibility_timeout", math.nan),
        ("visibility_timeout", math.inf),
        ("visibility_timeout", 43_201),
        ("delay_seconds", 901),
        ("message_retention_period", math.nan),
        ("max_receive_count", math.nan),
    ],
)
def test_queue_numbers_out_of_range_are_refused_before_any_request(
    aws_backend: AWSBackend,
    count_requests: Callable[..., Any],
    names: Any,
    option: str,
    value: float,
) -> None:
    counter = count_requests(aws_backend.sqs_client, aws_backend.sns_client)
    with pytest.raises(ConfigurationError, match=option):
        MessagingBackendFactory(aws_backend).init_queue(
            names.queue(), dead_letter_queue_name=names.queue("dlq"), **{option: value}
        )
    assert counter.total == 0


@pytest.mark.parametrize("option", ["visibility_timeout", "wait_time_seconds"])
def test_backend_numbers_must_be_finite(
    make_aws_backend: Callable[..., AWSBackend], option: str
) -> None:
    with pytest.raises(ConfigurationError, match=option):
        make_aws_backend(**{option: math.nan})
