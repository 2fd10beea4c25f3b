"""Helpers shared by the reliability tests: isolated Redis keys, Redis stop/restart, waits."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from conftest import require_service, service_up

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


@contextmanager
def redis_keys() -> Iterator[str]:
    """A key prefix unique to the caller; its keys are deleted afterwards."""
    host, port = require_service("redis")
    import redis

    prefix = f"melange-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        try:
            client = redis.Redis(host=host, port=port, socket_timeout=5)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()
        except redis.RedisError:
            pass  # Redis is down: it kept nothing anyway (it runs without persistence).


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def stop_redis() -> None:
    """Shut the machine's Redis down and wait until its port is closed."""
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False, timeout=30)
    wait_for(lambda: not service_up("127.0.0.1", 6379, 0.2), 30, "Redis to stop")


def start_redis() -> None:
    """Start the machine's Redis as CI does and wait until it answers PING."""
    if not service_up("127.0.0.1", 6379, 0.2):
        subprocess.run(REDIS_START, check=True, timeout=30)
    deadline = time.monotonic() + 30
    while True:
        probe = subprocess.run(
            ["redis-cli", "-p", "6379", "ping"], capture_output=True, text=True, timeout=10
        )
        if probe.stdout.strip() == "PONG":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Redis did not come back: {probe.stdout} {probe.stderr}")
        time.sleep(0.05)
