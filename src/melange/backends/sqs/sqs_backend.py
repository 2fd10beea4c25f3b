"""The SQS/SNS backend under the module path of earlier versions.

:class:`AWSBackend` now lives in :mod:`melange.backends.sqs.backend`; queues, topics and
subscriptions (:data:`QUEUE_ATTRIBUTE_OPTIONS`, :class:`QueueUrl`, :class:`TopicArn`) in
:mod:`melange.backends.sqs.topology`; the boto3 clients and error reporting in
:mod:`melange.backends.sqs.connection`; the message format (:class:`SQSReceipt`) in
:mod:`melange.backends.sqs.wire`. Every name importable from here before still is.
"""

from melange.backends.sqs import wire
from melange.backends.sqs.backend import MAX_VISIBILITY_TIMEOUT, AWSBackend, logger
from melange.backends.sqs.connection import MAX_WAIT_SECONDS
from melange.backends.sqs.topology import (
    DEFAULT_MAX_RECEIVE_COUNT,
    QUEUE_ATTRIBUTE_OPTIONS,
    QueueUrl,
    TopicArn,
)
from melange.backends.sqs.wire import SQSReceipt

__all__ = [
    "DEFAULT_MAX_RECEIVE_COUNT",
    "MAX_VISIBILITY_TIMEOUT",
    "MAX_WAIT_SECONDS",
    "QUEUE_ATTRIBUTE_OPTIONS",
    "AWSBackend",
    "QueueUrl",
    "SQSReceipt",
    "TopicArn",
    "logger",
    "wire",
]
