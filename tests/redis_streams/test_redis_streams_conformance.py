"""Both Redis Streams backends pass the shared conformance suite on the real Redis: the
blocking one, and the asyncio one through ``as_blocking`` (the asynchronous contract)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.redis_streams import RedisStreamsBackend
from melange.testing.conformance import BackendConformance

pytestmark = pytest.mark.redis


class TestRedisStreamsConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_streams: Callable[..., RedisStreamsBackend]) -> RedisStreamsBackend:
        return make_streams()

    @pytest.fixture
    def make_backend(
        self, make_streams: Callable[..., RedisStreamsBackend]
    ) -> Callable[[], MessagingBackend]:
        # Each concurrent consumer has its own connections and consumer name.
        return make_streams


class TestAsyncRedisStreamsConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_async_streams: Callable[..., MessagingBackend]) -> MessagingBackend:
        return make_async_streams()

    @pytest.fixture
    def make_backend(
        self, make_async_streams: Callable[..., MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        return make_async_streams
