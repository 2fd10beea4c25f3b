"""``melange consume module:service``: several queues in one process, ``--processes N``
supervised (a killed worker started again, nothing lost; SIGTERM drains every worker) and
``--reload``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import melange_command, sqlite_url, wait_for

from melange import Consumer, InMemoryMessagingBackend, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqlite import SQLiteBackend
from melange.serializers.json import JsonSerializer
from melange.service import Service
from service_check import require_service

#: The service the subprocess tests run: every handled message leaves a "start" and a
#: "done" line (with the worker's pid) in $APP_LOG.
APP = """
import os
import time

from melange import Consumer
from melange.service import Service

LOG = os.environ["APP_LOG"]
DELAY = float(os.environ.get("APP_DELAY", "0"))
VERSION = 1

service = Service("test-app")


def note(line: str) -> None:
    with open(LOG, "a") as log:
        log.write(line + "\\n")


def handler(queue: str):
    def handle(payload: dict) -> None:
        note(f"start {os.getpid()} {queue} {payload['n']} v{VERSION}")
        time.sleep(DELAY)
        note(f"done {os.getpid()} {queue} {payload['n']} v{VERSION}")

    return handle


for queue in os.environ["APP_QUEUES"].split(","):
    service.consume(queue, Consumer(handler(queue), name=f"app.{queue}"), workers=2)
"""


class Log:
    """The lines the service wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self, kind: str) -> list[list[str]]:
        if not self.path.exists():
            return []
        found = [line.split() for line in self.path.read_text().splitlines()]
        return [parts[1:] for parts in found if len(parts) == 5 and parts[0] == kind]

    def done(self) -> set[tuple[str, str]]:
        """(queue, n) of every message handled to the end."""
        return {(queue, n) for _, queue, n, _ in self.lines("done")}

    def pids(self) -> set[int]:
        return {int(pid) for pid, *_ in self.lines("start")}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    module = f"app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(APP)
    (tmp_path / "module").write_text(module)
    return tmp_path


def start(app_dir: Path, queues: list[str], url: str, *args: str, delay: float = 0.0) -> Any:
    module = (app_dir / "module").read_text()
    env = {k: v for k, v in os.environ.items() if k != "MELANGE_BACKEND_URL"}
    env.update(
        APP_LOG=str(app_dir / "log.txt"),
        APP_QUEUES=",".join(queues),
        APP_DELAY=str(delay),
        PYTHONUNBUFFERED="1",
    )
    return subprocess.Popen(
        melange_command("consume", f"{module}:service", "--backend-url", url, *args),
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"did not stop within {timeout} s after SIGTERM:\n{err}")
    return process.returncode, err


def wait_while_running(
    process: subprocess.Popen[str], condition: Any, what: str, timeout: float = 60.0
) -> None:
    """Wait for ``condition``; on timeout, fail with what the command said."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"{what}: not met (exit {process.returncode}); stderr:\n{err}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie waiting for its parent still answers; it consumes nothing.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


# -- in process -------------------------------------------------------------------------------


def test_a_service_consumes_each_of_its_queues_until_stopped() -> None:
    backend = InMemoryMessagingBackend()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("orders")
    factory.init_queue("payments")
    seen: list[tuple[str, int]] = []
    service = Service("shop", backend=backend)

    @service.consumer("orders", workers=3)
    def take_order(order: dict[str, int]) -> None:
        seen.append(("orders", order["n"]))

    service.consume("payments", Consumer(lambda p: seen.append(("payments", p["n"]))))
    publisher = QueuePublisher(JsonSerializer(), backend)
    for n in range(5):
        publisher.publish("orders", {"n": n})
        publisher.publish("payments", {"n": n})
    result: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: result.update(service.run(install_signal_handlers=False))
    )
    runner.start()
    wait_for(lambda: len(seen) == 10, timeout=20)
    service.stop()
    runner.join(timeout=20)

    assert not runner.is_alive()
    assert sorted(seen) == sorted([(q, n) for q in ("orders", "payments") for n in range(5)])
    assert service.queues[0].workers == 3
    assert result["orders"]["acknowledged"] == 5  # type: ignore[index]
    assert result["payments"]["acknowledged"] == 5  # type: ignore[index]


def test_async_handlers_get_an_asyncio_dispatcher_and_queues_can_be_chosen() -> None:
    backend = InMemoryMessagingBackend()
    factory = MessagingBackendFactory(backend)
    for queue in ("emails", "orders", "audit"):
        factory.init_queue(queue)
    seen: list[tuple[str, int]] = []
    service = Service("mixed", backend=backend)

    async def send_email(email: dict[str, int]) -> None:
        await asyncio.sleep(0)
        seen.append(("emails", email["n"]))

    service.consume("emails", Consumer(send_email), workers=2)
    service.consume("orders", Consumer(lambda order: seen.append(("orders", order["n"]))))
    service.consume("audit", Consumer(lambda entry: seen.append(("audit", entry["n"]))))
    publisher = QueuePublisher(JsonSerializer(), backend)
    for queue in ("emails", "orders", "audit"):
        publisher.publish(queue, {"n": 1})
    kinds: dict[str, str] = {}

    def started(dispatchers: dict[str, object]) -> None:
        kinds.update({queue: type(d).__name__ for queue, d in dispatchers.items()})

    runner = threading.Thread(
        target=service.run,
        kwargs={
            "queues": ["emails", "orders"],
            "install_signal_handlers": False,
            "on_start": started,
        },
    )
    runner.start()
    wait_for(lambda: len(seen) == 2, timeout=20)
    service.stop()
    runner.join(timeout=20)

    assert sorted(seen) == [("emails", 1), ("orders", 1)]
    assert kinds == {"emails": "AsyncMessageDispatcher", "orders": "MessageDispatcher"}
    assert backend.queue_depth("audit") == 1  # not chosen: left alone


def test_a_service_without_queues_or_with_a_missing_queue_says_so() -> None:
    service = Service("empty", backend=InMemoryMessagingBackend())
    with pytest.raises(ValueError, match="declares no queue"):
        service.run(install_signal_handlers=False)

    service.consume("ghost", Consumer(lambda _: None))
    with pytest.raises(Exception, match="ghost"):
        service.run(install_signal_handlers=False)


# -- melange consume module:service -----------------------------------------------------------


def test_one_process_consumes_two_queues_and_sigterm_drains_it(
    app_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "broker.db"
    backend = SQLiteBackend(db)
    factory = MessagingBackendFactory(backend)
    for queue in ("orders", "payments"):
        factory.init_queue(queue)
    publisher = QueuePublisher(JsonSerializer(), backend)
    for n in range(4):
        publisher.publish("orders", {"n": n})
        publisher.publish("payments", {"n": n})
    backend.close_connection()
    log = Log(app_dir / "log.txt")

    process = start(app_dir, ["orders", "payments"], sqlite_url(db))
    wait_while_running(process, lambda: len(log.done()) == 8, "8 messages handled")
    code, err = stop(process)

    assert code == 0, err
    assert log.done() == {(q, str(n)) for q in ("orders", "payments") for n in range(4)}
    assert len(log.pids()) == 1
    assert "consuming orders, payments" in err
    assert "stopped orders: received 4" in err and "stopped payments: received 4" in err


@pytest.fixture
def rabbit_queue() -> Iterator[tuple[str, str]]:
    """A queue on the shared RabbitMQ broker (deleted at the end) and the backend URL, with a
    small prefetch so that both workers get messages."""
    host, port = require_service("rabbitmq")
    url = f"amqp://guest:guest@{host}:{port}/"
    queue = f"runner-{uuid.uuid4().hex[:10]}"
    backend = RabbitMQBackend(url)
    MessagingBackendFactory(backend).init_queue(queue)
    backend.close_connection()
    yield queue, f"{url}?prefetch_count=2"
    cleaner = RabbitMQBackend(url)
    try:
        cleaner.delete_queue(cleaner.get_queue(queue))
    finally:
        cleaner.close_connection()


def publish(url: str, queue: str, count: int) -> None:
    backend = RabbitMQBackend(url.split("?")[0])
    try:
        QueuePublisher(JsonSerializer(), backend).publish_batch(
            queue, [{"n": n} for n in range(count)]
        )
    finally:
        backend.close_connection()


@pytest.mark.rabbitmq
def test_a_killed_worker_is_started_again_and_nothing_is_lost(
    app_dir: Path, rabbit_queue: tuple[str, str]
) -> None:
    queue, url = rabbit_queue
    publish(url, queue, 60)
    log = Log(app_dir / "log.txt")

    supervisor = start(app_dir, [queue], url, "--processes", "2", delay=0.1)
    wait_while_running(supervisor, lambda: len(log.pids()) == 2, "both workers consume")
    victim = next(iter(log.pids()))
    os.kill(victim, signal.SIGKILL)
    # Every message is handled: those the killed worker held went back to the queue.
    wait_while_running(supervisor, lambda: len(log.done()) == 60, "all handled", timeout=90)
    code, err = stop(supervisor)

    assert code == 0, err
    assert log.done() == {(queue, str(n)) for n in range(60)}
    assert f"(pid {victim}) stopped with killed by SIGKILL; starting it again" in err
    started = [line for line in err.splitlines() if "started (pid" in line]
    assert len(started) == 3, err  # two, and the one started again
    assert all(gone(pid) for pid in log.pids())


@pytest.mark.rabbitmq
def test_sigterm_lets_every_worker_finish_its_messages_and_exits_0(
    app_dir: Path, rabbit_queue: tuple[str, str]
) -> None:
    queue, url = rabbit_queue
    publish(url, queue, 40)
    log = Log(app_dir / "log.txt")

    supervisor = start(app_dir, [queue], url, "--processes", "2", delay=0.5)
    wait_while_running(supervisor, lambda: len(log.pids()) == 2, "both workers consume")
    code, err = stop(supervisor)

    assert code == 0, err
    started = {(queue_, n) for _, queue_, n, _ in log.lines("start")}
    assert started and started == log.done()  # none cut short
    assert len(log.done()) < 40  # stopped before the end: the rest stays queued
    assert all(gone(pid) for pid in log.pids())
    assert "every worker stopped" in err


def test_reload_restarts_the_workers_when_the_source_changes(app_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("watchfiles", reason="--reload needs the reload extra")
    db = tmp_path / "broker.db"
    backend = SQLiteBackend(db)
    MessagingBackendFactory(backend).init_queue("orders")
    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("orders", {"n": 1})
    log = Log(app_dir / "log.txt")

    supervisor = start(app_dir, ["orders"], sqlite_url(db), "--reload")
    try:
        wait_while_running(supervisor, lambda: len(log.done()) == 1, "first message handled")
        module = app_dir / f"{(app_dir / 'module').read_text()}.py"
        module.write_text(module.read_text().replace("VERSION = 1", "VERSION = 2"))
        time.sleep(1.0)  # the change is seen, the worker restarted
        deadline = time.monotonic() + 60
        while not any(v == "v2" for *_, v in log.lines("done")):
            assert time.monotonic() < deadline, "the new code never ran"
            publisher.publish("orders", {"n": 2})
            time.sleep(1.0)
    finally:
        backend.close_connection()
        code, err = stop(supervisor)

    assert code == 0, err
    assert "source changed: restarting every worker" in err
    assert len(log.pids()) >= 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_the_probes_of_a_service_watch_every_queue(app_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    backend = SQLiteBackend(db)
    factory = MessagingBackendFactory(backend)
    for queue in ("orders", "payments"):
        factory.init_queue(queue)
    backend.close_connection()
    port = free_port()

    process = start(app_dir, ["orders", "payments"], sqlite_url(db), "--health-port", str(port))
    wait_while_running(process, lambda: probe(port, "/readyz") == 200, "ready")
    live = probe(port, "/livez")
    code, err = stop(process)

    assert live == 200
    assert code == 0, err


def test_each_worker_process_serves_its_probes_on_its_own_port(
    app_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "broker.db"
    backend = SQLiteBackend(db)
    MessagingBackendFactory(backend).init_queue("orders")
    backend.close_connection()
    port = free_port()
    while probe(port + 1, "/livez") != 0:  # the next port must be free too
        port = free_port()

    supervisor = start(
        app_dir, ["orders"], sqlite_url(db), "--processes", "2", "--health-port", str(port)
    )
    wait_while_running(
        supervisor,
        lambda: probe(port, "/readyz") == 200 and probe(port + 1, "/readyz") == 200,
        "both workers ready",
    )
    code, err = stop(supervisor)

    assert code == 0, err


def test_workers_whose_supervisor_was_killed_stop_by_themselves(
    app_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "broker.db"
    backend = SQLiteBackend(db)
    MessagingBackendFactory(backend).init_queue("orders")
    publisher = QueuePublisher(JsonSerializer(), backend)
    for n in range(2):
        publisher.publish("orders", {"n": n})
    backend.close_connection()
    log = Log(app_dir / "log.txt")

    supervisor = start(app_dir, ["orders"], sqlite_url(db), "--processes", "2")
    wait_while_running(supervisor, lambda: len(log.done()) == 2, "messages handled")
    workers = [
        int(line.split("pid ")[1].rstrip(")")) for line in _started_lines(supervisor, count=2)
    ]
    supervisor.kill()
    # The workers hold the supervisor's output pipes: they close when the last one ends.
    supervisor.communicate(timeout=30)

    wait_for(lambda: all(gone(pid) for pid in workers), timeout=30)


def _started_lines(process: subprocess.Popen[str], count: int) -> list[str]:
    """The first ``count`` "worker N started (pid P)" lines of the supervisor."""
    assert process.stderr is not None
    found: list[str] = []
    while len(found) < count:
        line = process.stderr.readline()
        assert line, "the supervisor ended before starting its workers"
        if "started (pid" in line:
            found.append(line.strip())
    return found


def test_the_metrics_of_a_service_give_the_depth_of_each_queue(
    app_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("prometheus_client", reason="--metrics-port needs the prometheus extra")
    db = tmp_path / "broker.db"
    backend = SQLiteBackend(db)
    factory = MessagingBackendFactory(backend)
    for queue in ("orders", "payments"):
        factory.init_queue(queue)
    factory.init_queue("other")
    backend.close_connection()
    port = free_port()

    process = start(app_dir, ["orders", "payments"], sqlite_url(db), "--metrics-port", str(port))
    wait_while_running(process, lambda: probe(port, "/metrics") == 200, "metrics served")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    code, err = stop(process)

    assert code == 0, err
    assert 'melange_queue_messages{queue="orders",state="ready"} 0.0' in text
    assert 'melange_queue_messages{queue="payments",state="ready"} 0.0' in text
    assert 'queue="other"' not in text
