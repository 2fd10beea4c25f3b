"""The local SQS backend under the path the original documentation uses."""

from melange.backends.sqs.localsqs import LocalSQSBackend

__all__ = ["LocalSQSBackend"]
