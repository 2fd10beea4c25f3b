"""The SQS/SNS backend passes the shared conformance suite."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange.backends.sqs.backend import AWSBackend
from melange.testing.conformance import BackendConformance


class TestAWSBackendConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_aws_backend: Callable[..., AWSBackend]) -> AWSBackend:
        # visibility_timeout=None: each queue's own VisibilityTimeout applies, which is what the
        # suite's timeout tests declare (the default requests 100 s on every receive).
        return make_aws_backend(visibility_timeout=None, wait_time_seconds=1)

    @pytest.fixture
    def make_backend(self, make_aws_backend: Callable[..., AWSBackend]) -> Callable[[], AWSBackend]:
        return lambda: make_aws_backend(visibility_timeout=None, wait_time_seconds=1)
