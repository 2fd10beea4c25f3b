"""``melange queues list|stats|purge`` and ``melange dlq show|redrive`` on Redis Streams,
named by a ``redis+streams://`` URL with the test's own key prefix."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from inspection_suite import Inspected, InspectionSuite, melange_json
from melange.backends.redis_streams import RedisStreamsBackend

pytestmark = pytest.mark.redis


class TestInspectionOnRedisStreams(InspectionSuite):
    @pytest.fixture
    def inspected(
        self, redis_url: str, prefix: str, make_streams: Callable[..., RedisStreamsBackend]
    ) -> Inspected:
        url = redis_url.replace("redis://", "redis+streams://") + f"?prefix={prefix}"
        return Inspected(url, make_streams)

    def test_purge_deletes_the_messages_in_flight_too(self, broker: Inspected) -> None:
        backend = broker.open_backend()
        [held] = backend.retrieve_messages(backend.get_queue("payments-dlq"), max_messages=1)

        done = melange_json("queues", "purge", "payments-dlq", "-y", "--backend-url", broker.url)

        assert done["deleted"] == 2
        assert backend.queue_depth("payments-dlq") == 0
        backend.acknowledge(held)  # a late settlement of a purged message changes nothing
        assert backend.queue_depth("payments-dlq") == 0
        assert backend.queue_depth("orders") == 1
