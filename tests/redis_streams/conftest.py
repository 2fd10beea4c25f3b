"""Fixtures for the Redis Streams tests: backends on the Redis at 127.0.0.1:6379.

Each test writes its keys under a prefix of its own (``melange-test-<random>:``) and deletes
every key under it afterwards: the shared Redis may hold other data, so nothing else is ever
touched (no ``FLUSHDB``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend
from melange.testing.blocking import as_blocking


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TESTS = Path(__file__).resolve().parent.parent
require_service = _load("melange_tests_root_conftest", _TESTS / "conftest.py").require_service


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (and nothing else); returns how many."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


@pytest.fixture
def redis_url() -> str:
    host, port = require_service("redis")
    return f"redis://{host}:{port}/0"


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to the test; every key under it is deleted afterwards."""
    made = f"melange-test-{uuid.uuid4().hex[:12]}:"
    yield made
    delete_prefix(redis_url, made)


@pytest.fixture
def make_streams(redis_url: str, prefix: str) -> Iterator[Callable[..., RedisStreamsBackend]]:
    """Opens blocking backends on the test's prefix and closes them after the test."""
    opened: list[RedisStreamsBackend] = []

    def make(**kwargs: Any) -> RedisStreamsBackend:
        kwargs.setdefault("prefix", prefix)
        backend = RedisStreamsBackend(kwargs.pop("url", redis_url), **kwargs)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        with contextlib.suppress(Exception):
            backend.close_connection()


@pytest.fixture
def streams(make_streams: Callable[..., RedisStreamsBackend]) -> RedisStreamsBackend:
    return make_streams()


@pytest.fixture
def make_async_streams(redis_url: str, prefix: str) -> Iterator[Callable[..., MessagingBackend]]:
    """Opens asyncio backends, each on a loop thread of its own (``as_blocking``)."""
    opened: list[MessagingBackend] = []

    def make(**kwargs: Any) -> MessagingBackend:
        kwargs.setdefault("prefix", prefix)
        backend = as_blocking(AsyncRedisStreamsBackend(kwargs.pop("url", redis_url), **kwargs))
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        with contextlib.suppress(Exception):
            backend.close_connection()
