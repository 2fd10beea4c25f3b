"""Fixtures for the RabbitMQ tests: backends on the broker at 127.0.0.1:5672."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from melange.backends.rabbitmq import RabbitMQBackend
from melange.testing.conformance import Topology


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


class TcpProxy:
    """A TCP relay between the backend and the broker that a test can cut, like a network blip.

    ``cut()`` resets every relayed connection; while ``refusing`` is set, new connections are
    accepted and dropped at once, as when the broker is unreachable.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.refusing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="test-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets.difference_update((source, target))

    def cut(self) -> int:
        """Reset every relayed connection; returns how many sockets were cut."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # with linger 0: a reset, as a failing network gives
        return len(sockets)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy(rabbit_address: tuple[str, int]) -> Iterator[TcpProxy]:
    relay = TcpProxy(rabbit_address)
    yield relay
    relay.close()
