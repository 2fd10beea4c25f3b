"""``melange queues`` and ``melange dlq`` on NATS JetStream (``nats://`` URLs with the test's
own stream prefix)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from inspection_suite import Inspected, InspectionSuite
from melange.backends.nats import NATSBackend

pytestmark = pytest.mark.nats


class TestInspectionOnNATS(InspectionSuite):
    @pytest.fixture
    def inspected(
        self, nats_url: str, prefix: str, make_nats: Callable[..., NATSBackend]
    ) -> Inspected:
        return Inspected(f"{nats_url}?prefix={prefix}", make_nats)
