"""Helpers shared by the reliability tests: durable backends, consumer processes, journals,
isolated Redis keys, a throwaway Redis to stop and restart, and polling waits.

Also imported by ``consumer_worker.py`` in child processes, so it imports nothing heavy at
module level.
"""

from __future__ import annotations

import collections
import contextlib
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

from melange.backends.async_interfaces import AsyncMessagingBackend, as_async
from melange.backends.interfaces import MessagingBackend
from melange.models import Message

HERE = Path(__file__).resolve().parent


@contextmanager
def redis_keys() -> Iterator[str]:
    """A key prefix unique to the caller; its keys are deleted afterwards."""
    from service_check import require_service

    host, port = require_service("redis")
    import redis

    prefix = f"melange-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        try:
            client = redis.Redis(host=host, port=port, socket_timeout=5)
            keys = list(client.scan_iter(match=prefix + "*", count=10_000))
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


class ThrowawayRedis:
    """A ``redis-server`` of the test's own, on a free loopback port, that it may stop and
    start again (a test never stops the machine's Redis: it may hold somebody's data)."""

    def __init__(self, tmp_dir: Path) -> None:
        import shutil

        server = shutil.which("redis-server")
        if server is None:
            import pytest

            pytest.fail("redis-server is needed to start a throwaway Redis")
        self._server = server
        self._dir = tmp_dir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers."""
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            [self._server, "--port", str(self.port), *options, "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: service_up("127.0.0.1", self.port, 0.2), 30, "the Redis to start")

    def stop(self) -> None:
        """Stop it and wait until its port is closed."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(30)
        wait_for(lambda: not service_up("127.0.0.1", self.port, 0.2), 30, "the Redis to stop")

    def __enter__(self) -> ThrowawayRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def service_up(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- durable backends, shared by processes --------------------------------------------------

#: Durable backends the in-process tests repeat their cases on (fixed queue names are fine:
#: each test gets its own file).
DURABLE_BACKENDS = ["sqlite"]
#: Durable backends that consumer processes share in the cross-process tests.
SHARED_BACKENDS = ["sqlite", "rabbitmq", "sqs", "redis-streams", "nats"]


def _require(name: str) -> None:
    from service_check import require_service

    require_service(name)


def durable_spec(
    kind: str,
    tmp_path: Path,
    visibility_timeout: float,
    sqs_endpoint: str | None = None,
    kafka: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-able description of a fresh queue home on backend ``kind``.

    ``spec["queue"]`` names a queue unique to the caller; its dead-letter queue is
    ``spec["queue"] + "-dlq"`` once declared with :func:`declare_work_queue`. A Kafka spec
    takes ``kafka``: ``url`` (the test's broker) and the ``KafkaBackend`` options.
    """
    suffix = uuid.uuid4().hex[:10]
    spec: dict[str, Any] = {
        "kind": kind,
        "queue": f"work-{suffix}",
        "visibility_timeout": visibility_timeout,
    }
    if kind == "sqlite":
        if importlib.util.find_spec("melange.backends.sqlite") is None:
            import pytest

            pytest.skip("the SQLite backend is not part of this build")
        spec["path"] = str(tmp_path / "broker.sqlite3")
    elif kind == "rabbitmq":
        _require("rabbitmq")
        spec.update(host="127.0.0.1", port=5672, connection_name=f"melange-fault-{suffix}")
    elif kind == "sqs":
        if sqs_endpoint is None:
            raise ValueError("an SQS spec needs the endpoint of the test's SQS server")
        spec["endpoint"] = sqs_endpoint
        # SQS counts whole seconds.
        spec["visibility_timeout"] = max(1, round(visibility_timeout))
    elif kind == "redis-streams":
        _require("redis")
        # Every key of the test under a prefix of its own (deleted by delete_work_queue).
        spec.update(url="redis://127.0.0.1:6379/0", prefix=f"melange-fault-{suffix}:")
    elif kind == "nats":
        _require("nats")
        # Every stream of the test under a prefix of its own (deleted by delete_work_queue).
        spec.update(url="nats://127.0.0.1:4222", prefix=f"mfault-{suffix}")
    elif kind == "kafka":
        if kafka is None:
            raise ValueError("a Kafka spec needs the URL of the test's broker")
        # No visibility timeout on Kafka: a consumer keeps what it fetched until it leaves.
        spec.update(url=kafka["url"], options={k: v for k, v in kafka.items() if k != "url"})
    else:
        raise ValueError(f"unknown durable backend {kind!r}")
    return spec


def _backend_arguments(spec: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The constructor arguments of the backend ``spec`` describes (the blocking backend and
    its asyncio twin take the same)."""
    kind = spec["kind"]
    if kind == "sqlite":
        return (spec["path"],), {"visibility_timeout": spec["visibility_timeout"]}
    if kind == "rabbitmq":
        return (), {
            "host": spec["host"],
            "port": spec["port"],
            "connection_name": spec["connection_name"],
        }
    if kind == "sqs":
        return (), {
            "endpoint_url": spec["endpoint"],
            "sns_endpoint_url": spec["endpoint"],
            "region_name": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "visibility_timeout": spec["visibility_timeout"],
            "wait_time_seconds": 1,
        }
    if kind in ("redis-streams", "nats", "kombu"):
        return (spec["url"],), {
            "prefix": spec["prefix"],
            "visibility_timeout": spec["visibility_timeout"],
        }
    if kind == "kafka":
        return (spec["url"],), dict(spec["options"])
    raise ValueError(f"unknown durable backend {kind!r}")


def _backend_class(kind: str, asyncio: bool) -> Any:
    """The backend class of ``kind`` (its asyncio twin with ``asyncio``; ``None`` when it
    has none)."""
    if kind == "sqlite":
        from melange.backends.sqlite import SQLiteBackend

        return None if asyncio else SQLiteBackend
    if kind == "rabbitmq":
        from melange.backends.rabbitmq import AsyncRabbitMQBackend, RabbitMQBackend

        return AsyncRabbitMQBackend if asyncio else RabbitMQBackend
    if kind == "sqs":
        from melange.backends.sqs.backend import AWSBackend

        if asyncio:
            from melange.backends.sqs.async_backend import AsyncAWSBackend

            return AsyncAWSBackend
        return AWSBackend
    if kind == "redis-streams":
        from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend

        return AsyncRedisStreamsBackend if asyncio else RedisStreamsBackend
    if kind == "nats":
        from melange.backends.nats import AsyncNATSBackend, NATSBackend

        return AsyncNATSBackend if asyncio else NATSBackend
    if kind == "kafka":
        from melange.backends.kafka import AsyncKafkaBackend, KafkaBackend

        return AsyncKafkaBackend if asyncio else KafkaBackend
    if kind == "kombu":
        from melange.backends.kombu import KombuBackend

        return None if asyncio else KombuBackend
    raise ValueError(f"unknown durable backend {kind!r}")


def open_backend(spec: dict[str, Any]) -> MessagingBackend:
    """Open (in this process) the backend ``spec`` describes."""
    args, kwargs = _backend_arguments(spec)
    backend: MessagingBackend = _backend_class(spec["kind"], asyncio=False)(*args, **kwargs)
    return backend


def open_async_backend(spec: dict[str, Any]) -> AsyncMessagingBackend:
    """Open (in this process, on the running event loop) the asyncio backend of ``spec``:
    the backend's native asyncio twin, on the same queues, or the blocking backend adapted
    where it has none (SQLite)."""
    twin = _backend_class(spec["kind"], asyncio=True)
    if twin is None:
        return as_async(open_backend(spec))
    args, kwargs = _backend_arguments(spec)
    backend: AsyncMessagingBackend = twin(*args, **kwargs)
    return backend


def declare_work_queue(backend: MessagingBackend, spec: dict[str, Any]) -> None:
    """Declare ``spec["queue"]`` with its dead-letter queue."""
    options: dict[str, Any] = {}
    if spec["kind"] in ("sqlite", "sqs", "redis-streams", "nats"):
        options["visibility_timeout"] = spec["visibility_timeout"]
    backend.declare_queue(spec["queue"], dead_letter_queue_name=spec["queue"] + "-dlq", **options)


def delete_work_queue(backend: MessagingBackend, spec: dict[str, Any]) -> None:
    """Delete the queues of ``spec`` on a shared broker (a SQLite file goes with tmp_path)."""
    if spec["kind"] == "sqlite":
        return
    if spec["kind"] == "redis-streams":
        client = backend.client  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{spec['prefix']}*", count=1000))
        if keys:
            client.delete(*keys)
        return
    for name in (spec["queue"], spec["queue"] + "-dlq"):
        with contextlib.suppress(Exception):  # already gone
            backend.delete_queue(backend.get_queue(name))


def queue_depth(backend: MessagingBackend, queue: str, spec: dict[str, Any] | None = None) -> int:
    """Messages held by ``queue``. On RabbitMQ only messages not held by a consumer count:
    call it when no consumer is connected to get them all."""
    depth = getattr(backend, "queue_depth", None)
    if depth is not None:
        return int(depth(queue))
    kind = spec["kind"] if spec else None
    if kind == "rabbitmq":
        assert spec is not None
        import pika

        connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=spec["host"], port=spec["port"])
        )
        try:
            declared = connection.channel().queue_declare(queue, passive=True)
            return int(declared.method.message_count)
        finally:
            connection.close()
    if kind == "sqs":
        client = backend.sqs_client  # type: ignore[attr-defined]
        url = backend.get_queue(queue).unwrapped_obj
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        found = client.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return sum(int(found.get(name, 0)) for name in names)
    raise NotImplementedError(f"{backend!r} cannot tell a queue's depth")


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto SQS/SNS server on a free port for the duration of the block; yields its URL."""
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the moto server did not start on port {port}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    message_ids: dict[int, str] = field(default_factory=dict)
    #: Per message, each handler outcome in order: ("end" or "fail", attempt).
    outcomes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
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
            if len(parts) != 5:
                continue
            phase, n, message_id, pid, attempt = parts
            if phase == "ready":
                journal.ready.add(int(pid))
            elif phase == "exit":
                journal.exited.add(int(pid))
            elif phase == "start":
                journal.starts[int(n)] += 1
            elif phase == "end":
                journal.ends[int(n)] += 1
                journal.message_ids[int(n)] = message_id
            if phase in ("end", "fail"):
                journal.outcomes.setdefault(int(n), []).append((phase, int(attempt)))
        return journal


def drain(
    backend: MessagingBackend, queue: str, expected: int | None = None, timeout: float = 30.0
) -> list[Message]:
    """Receive and acknowledge the messages of ``queue``: those visible now, or, when
    ``expected`` is given, until that many arrived (brokers that push messages to consumers,
    like RabbitMQ, may hand out an empty batch while more are on their way)."""
    handle = backend.get_queue(queue)
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while True:
        wait = 0 if expected is None else 1
        batch = backend.retrieve_messages(handle, max_messages=10, wait_seconds=wait)
        if batch:
            backend.acknowledge_batch(batch)
            out.extend(batch)
        if expected is None:
            if not batch:
                return out
        elif len(out) >= expected or time.monotonic() > deadline:
            return out
