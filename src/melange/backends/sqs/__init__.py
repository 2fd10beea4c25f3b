"""Amazon SQS/SNS and SQS-compatible backends (needs the ``aws`` extra: boto3).

:class:`AWSBackend` (boto3, blocking) and :class:`AsyncAWSBackend` (aiobotocore, asyncio; the
``aws-async`` extra) run the same operations, so either consumes what the other published.
The names below are imported on first use: importing this package needs neither boto3 nor
aiobotocore.

- :mod:`melange.backends.sqs.backend`: :class:`AWSBackend`, SQS queues and SNS topics:
  publishing, receiving, settling, lifecycle.
- :mod:`melange.backends.sqs.topology`: creating, looking up and deleting queues and topics;
  queue attributes, redrive policies (dead-letter queues), access policies, SNS
  subscriptions and filter policies.
- :mod:`melange.backends.sqs.connection`: the boto3 clients (session, region, endpoints,
  credentials) and how botocore's failures, network ones included, become Melange errors.
- :mod:`melange.backends.sqs.wire`: the message format shared with Melange 7.2.0, request
  entries and received messages (importable without boto3).
- :mod:`melange.backends.sqs.async_backend`: :class:`AsyncAWSBackend` and
  :class:`AsyncLocalSQSBackend`, the same on asyncio (aiobotocore).
- :mod:`melange.backends.sqs.localsqs` (also :mod:`melange.backends.sqs.elasticmq`):
  :class:`LocalSQSBackend` for ElasticMQ, LocalStack or moto on a host and port.
- :mod:`melange.backends.sqs.sqs_backend`: the module path of earlier versions, re-exporting
  :class:`AWSBackend` and its companions.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melange.backends.sqs.async_backend import AsyncAWSBackend, AsyncLocalSQSBackend
    from melange.backends.sqs.backend import AWSBackend
    from melange.backends.sqs.localsqs import LocalSQSBackend

_LAZY = {
    "AWSBackend": "melange.backends.sqs.backend",
    "LocalSQSBackend": "melange.backends.sqs.localsqs",
    "AsyncAWSBackend": "melange.backends.sqs.async_backend",
    "AsyncLocalSQSBackend": "melange.backends.sqs.async_backend",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: the blocking backends need boto3, the asyncio ones aiobotocore.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["AWSBackend", "AsyncAWSBackend", "AsyncLocalSQSBackend", "LocalSQSBackend"]
