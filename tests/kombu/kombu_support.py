"""Helpers of the kombu backend tests: the transports they run on and their URLs."""

from __future__ import annotations

import pytest

from service_check import require_service

#: The transports the tests run on, as pytest parameters with their service's mark.
TRANSPORTS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("amqp", marks=pytest.mark.rabbitmq),
]


def delete_redis_prefix(prefix: str) -> int:
    """Delete every key under ``prefix`` on the test Redis (and nothing else)."""
    import redis

    deleted = 0
    with redis.Redis(host="127.0.0.1", port=6379, db=0) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            deleted += int(client.delete(*keys[start : start + 500]))
    return deleted


def transport_url(transport: str) -> str:
    """The backend URL of a transport on this machine's services."""
    if transport == "redis":
        host, port = require_service("redis")
        return f"kombu+redis://{host}:{port}/0"
    host, port = require_service("rabbitmq")
    return f"kombu+amqp://guest:guest@{host}:{port}//"


__all__ = ["TRANSPORTS", "delete_redis_prefix", "transport_url"]
