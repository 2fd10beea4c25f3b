"""Helpers shared by the reliability tests: durable backends, consumer processes, journals,
isolated Redis keys, stopping and restarting Redis, and polling waits.

Also imported by ``consumer_worker.py`` in child processes, so it imports nothing heavy at
module level.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.models import Message

HERE = Path(__file__).resolve().parent

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
    from conftest import require_service

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


def service_up(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- durable backends, shared by processes --------------------------------------------------

#: Durable backends the cross-process tests run on, when their module is available.
DURABLE_BACKENDS = ["sqlite"]


def durable_spec(kind: str, tmp_path: Path, visibility_timeout: float) -> dict[str, Any]:
    """A JSON-able description of a fresh queue home on backend ``kind``."""
    if kind == "sqlite":
        if importlib.util.find_spec("melange.backends.sqlite") is None:
            import pytest

            pytest.skip("the SQLite backend is not part of this build")
        return {
            "kind": "sqlite",
            "path": str(tmp_path / "broker.sqlite3"),
            "visibility_timeout": visibility_timeout,
        }
    raise ValueError(f"unknown durable backend {kind!r}")


def open_backend(spec: dict[str, Any]) -> MessagingBackend:
    """Open (in this process) the backend ``spec`` describes."""
    if spec["kind"] == "sqlite":
        from melange.backends.sqlite import SQLiteBackend

        return SQLiteBackend(spec["path"], visibility_timeout=spec["visibility_timeout"])
    raise ValueError(f"unknown durable backend {spec['kind']!r}")


def queue_depth(backend: MessagingBackend, queue: str) -> int:
    """Messages held by ``queue``, in flight or not."""
    depth = getattr(backend, "queue_depth", None)
    if depth is None:
        raise NotImplementedError(f"{backend!r} cannot tell a queue's depth")
    return int(depth(queue))


# -- consumer processes and their journals --------------------------------------------------


def spawn_worker(config: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start ``consumer_worker.py`` with ``config``; its output goes to a log next to the
    journal so that a failing test can show it."""
    log = open(str(config["journal"]) + f".{uuid.uuid4().hex[:6]}.log", "wb")  # noqa: SIM115
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, str(HERE / "consumer_worker.py"), json.dumps(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` if it still runs (cleanup after a failed test)."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(30)


@dataclass
class Journal:
    """What the consumer processes wrote to a journal file."""

    starts: collections.Counter[int] = field(default_factory=collections.Counter)
    ends: collections.Counter[int] = field(default_factory=collections.Counter)
    ends_by_pid: dict[int, collections.Counter[int]] = field(default_factory=dict)
    message_ids: dict[int, str] = field(default_factory=dict)
    ready: set[int] = field(default_factory=set)
    exited: set[int] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> Journal:
        """Parse the journal at ``path`` (missing: empty); a torn last line is ignored."""
        journal = cls()
        if not path.exists():
            return journal
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            phase, n, message_id, pid = parts
            if phase == "ready":
                journal.ready.add(int(pid))
            elif phase == "exit":
                journal.exited.add(int(pid))
            elif phase == "start":
                journal.starts[int(n)] += 1
            elif phase == "end":
                journal.ends[int(n)] += 1
                journal.ends_by_pid.setdefault(int(pid), collections.Counter())[int(n)] += 1
                journal.message_ids[int(n)] = message_id
        return journal

    def duplicates(self) -> int:
        """Completed handler runs beyond the first, over every message."""
        return sum(count - 1 for count in self.ends.values() if count > 1)


def drain(backend: MessagingBackend, queue: str) -> list[Message]:
    """Receive and acknowledge every message visible in ``queue`` now."""
    handle = backend.get_queue(queue)
    out: list[Message] = []
    while True:
        batch = backend.retrieve_messages(handle, max_messages=10, wait_seconds=0)
        if not batch:
            return out
        backend.acknowledge_batch(batch)
        out.extend(batch)
