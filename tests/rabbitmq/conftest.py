"""Fixtures for the RabbitMQ tests: backends on the broker at 127.0.0.1:5672."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from melange.backends.rabbitmq import RabbitMQBackend
from melange.testing.conformance import Topology
from tcp_relay import TcpRelay


def _root_conftest() -> ModuleType:
    # Loaded by path: the module name "conftest" is shared by every test directory.
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("melange_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


require_service = _root_conftest().require_service


@pytest.fixture
def rabbit_address() -> tuple[str, int]:
    return require_service("rabbitmq")


@pytest.fixture
def connection_name() -> str:
    """A name unique to the test, to find (and close) exactly its connections on the broker."""
    return f"melange-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_rabbit(
    rabbit_address: tuple[str, int], connection_name: str
) -> Iterator[Callable[..., RabbitMQBackend]]:
    """Opens backends on the broker and closes them after the test."""
    opened: list[RabbitMQBackend] = []
    host, port = rabbit_address

    def make(**kwargs: object) -> RabbitMQBackend:
        kwargs.setdefault("connection_name", connection_name)
        kwargs.setdefault("host", host)
        kwargs.setdefault("port", port)
        backend = RabbitMQBackend(**kwargs)  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        with contextlib.suppress(Exception):
            backend.close_connection()


@pytest.fixture
def rabbit(make_rabbit: Callable[..., RabbitMQBackend]) -> RabbitMQBackend:
    return make_rabbit()


def close_connections_named(name: str) -> int:
    """Force-close, on the broker, every connection whose client named it ``name``.

    The same as ``rabbitmqctl close_all_connections`` for this test's connections only, so
    tests running at the same time against the same broker keep theirs. Returns how many
    connections were closed.
    """
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.fail("rabbitmqctl is needed to close connections on the broker")
    listed = subprocess.run(
        [
            rabbitmqctl,
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pids = [
        line.split("\t", 1)[0]
        for line in listed.stdout.splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]
    # In parallel, so that every connection is cut at about the same moment.
    closers = [
        subprocess.Popen(
            [rabbitmqctl, "close_connection", pid, "test: simulated broker failure"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    for closer in closers:
        assert closer.wait(timeout=60) == 0, "rabbitmqctl close_connection failed"
    return len(pids)


@pytest.fixture
def kill_connections(connection_name: str) -> Callable[[], int]:
    """Closes this test's connections on the broker (see :func:`close_connections_named`)."""
    return lambda: close_connections_named(connection_name)


@pytest.fixture
def topology(rabbit: RabbitMQBackend) -> Iterator[Topology]:
    """Unique queues and topics on the broker, deleted after the test."""
    topo = Topology(rabbit)
    yield topo
    topo.cleanup()


#: The relay under the name the RabbitMQ tests first gave it.
TcpProxy = TcpRelay


@pytest.fixture
def proxy(rabbit_address: tuple[str, int]) -> Iterator[TcpRelay]:
    relay = TcpRelay(rabbit_address)
    yield relay
    relay.close()
