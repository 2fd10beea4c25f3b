"""Fault tests of the outbox, the relay and the inbox on PostgreSQL and SQLite, with RabbitMQ
and SQS: processes are SIGKILLed at the worst moments and nothing is lost or done twice
beyond what the guarantees allow."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from outbox_support import Database, melange_command, run_melange

from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import backend_from_url
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.dispatch.threaded import MessageDispatcher
from melange.outbox import Inbox, Outbox, Relay, UnitOfWork
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from service_check import require_service

WORKER = str(Path(__file__).with_name("outbox_worker.py"))

pytestmark = pytest.mark.slow


class Broker:
    """A broker under test: its URL for other processes, a backend here, unique queues."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.backend: MessagingBackend = backend_from_url(url)
        self.queues: list[str] = []

    def queue(self) -> str:
        name = f"outbox-{uuid.uuid4().hex[:10]}"
        options = {"visibility_timeout": 2} if self.kind == "sqs" else {}
        self.backend.declare_queue(name, **options)
        self.queues.append(name)
        return name

    def receive(
        self, queue: str, expected: int, quiet: float = 2.0, limit: float = 90
    ) -> list[Any]:
        """The bodies received from ``queue`` (acknowledged), once ``expected`` arrived and
        nothing more came for ``quiet`` seconds (or ``limit`` passed)."""
        handle = self.backend.get_queue(queue)
        bodies: list[Any] = []
        started = last = time.monotonic()
        while time.monotonic() - started < limit:
            batch = self.backend.retrieve_messages(handle, max_messages=10, wait_seconds=0.5)
            for message in batch:
                bodies.append(json.loads(message.content))
                self.backend.acknowledge(message)
            now = time.monotonic()
            if batch:
                last = now
            elif len(bodies) >= expected and now - last >= quiet:
                break
        return bodies

    def close(self) -> None:
        for name in self.queues:
            with contextlib.suppress(Exception):  # already gone
                self.backend.delete_queue(self.backend.get_queue(name))
        self.backend.close_connection()


@pytest.fixture(params=["rabbitmq", "sqs"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "rabbitmq":
        host, port = require_service("rabbitmq")
        made = Broker("rabbitmq", f"amqp://guest:guest@{host}:{port}/%2F")
    else:
        endpoint = request.getfixturevalue("sqs_endpoint")
        made = Broker(
            "sqs",
            f"sqs://testing:testing@?region={endpoint.region}&endpoint_url={endpoint.sqs_url}"
            # A crashed consumer's messages come back after 3 s.
            "&visibility_timeout=3&wait_time_seconds=1",
        )
    try:
        yield made
    finally:
        made.close()


def _ready(database: Database) -> Outbox:
    outbox = Outbox(table=database.table)
    with database.connect() as conn:
        outbox.create_table(conn)
    return outbox


def _worker(command: str, database: Database, broker: Broker, **options: Any) -> list[str]:
    argv = [sys.executable, WORKER, command, "--dsn", database.dsn, "--table", database.table]
    argv += ["--backend-url", broker.url]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def _relay_once(database: Database, broker: Broker, *extra: str) -> str:
    done = run_melange(
        "relay", "--dsn", database.dsn, "--table", database.table,
        "--backend-url", broker.url, "--once", *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_messages_committed_by_a_process_killed_before_the_relay_sent_them_arrive_after_restart(
    database: Database, broker: Broker
) -> None:
    _ready(database)
    queue = broker.queue()
    worker = subprocess.run(
        _worker("commit-then-die", database, broker, queue=queue, count=20),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    assert "committed" in worker.stdout
    assert broker.receive(queue, 0, quiet=1) == []  # the relay never sent them
    assert database.rows() == 20
    assert _relay_once(database, broker) == "sent 20 message(s)\n"
    bodies = broker.receive(queue, 20)
    assert sorted(b["n"] for b in bodies) == list(range(20))
    assert database.rows() == 0


def test_rolled_back_and_uncommitted_messages_are_never_published(
    database: Database, broker: Broker
) -> None:
    outbox = _ready(database)
    queue = broker.queue()
    conn = database.connect()

    def roll_back() -> None:
        with conn:
            outbox.publish(conn, queue, {"n": "rolled back"})
            raise RuntimeError("the business write failed")

    with pytest.raises(RuntimeError):
        roll_back()
    worker = subprocess.run(
        _worker("die-before-commit", database, broker, queue=queue, count=5),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode == -signal.SIGKILL and "written" in worker.stdout, worker.stderr
    with database.connect() as conn2:
        outbox.publish(conn2, queue, {"n": "committed"})
    assert _relay_once(database, broker) == "sent 1 message(s)\n"
    assert broker.receive(queue, 1, quiet=2) == [{"n": "committed"}]
    assert database.rows() == 0


def test_a_relay_killed_mid_batch_loses_nothing_and_resends_at_most_that_batch(
    database: Database, broker: Broker, tmp_path: Path
) -> None:
    outbox = _ready(database)
    queue = broker.queue()
    total, batch = 300, 50
    with database.connect() as conn:
        for n in range(total):
            outbox.publish(conn, queue, {"n": n})
    marker = tmp_path / "confirmed"
    relay = subprocess.Popen(
        _worker("relay-dies-after-a-confirmed-batch", database, broker,
                marker=marker, batch_size=batch, lease_seconds=2),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and relay.poll() is None, "no batch confirmed"
            time.sleep(0.02)
    finally:
        relay.kill()
        relay.wait()
    assert int(marker.read_text()) == batch
    assert database.rows() == total  # the confirmed batch was never recorded as sent
    if database.dialect == "sqlite":
        time.sleep(2.2)  # the dead relay's lease runs out (PostgreSQL: freed at its death)
    _relay_once(database, broker)
    assert database.rows() == 0

    # An inbox consumer on the receiving side does each message's work once.
    effects = f"effects_{database.table}"
    with database.connect() as conn:
        conn.execute(f"CREATE TABLE {effects} (n INTEGER NOT NULL)")
    cache = SQLDeduplicationCache(database.dsn, table=f"done_{database.table}")
    inbox = Inbox(database.connect, cache)
    mark = "%s" if database.dialect == "postgresql" else "?"

    @inbox.consumer(name="effects")
    def handle(event: dict[str, Any], uow: UnitOfWork) -> None:
        uow.connection.execute(f"INSERT INTO {effects} (n) VALUES ({mark})", (event["n"],))

    dispatcher = MessageDispatcher(JsonSerializer(), backend=broker.backend, consumers=[handle])
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 3:
        if dispatcher.consume_event(queue, max_messages=10, wait_seconds=0.5):
            quiet_since = time.monotonic()
    inbox.close()
    cache.close()
    received = inbox.stats.processed + inbox.stats.skipped
    assert inbox.stats.processed == total
    assert 0 < inbox.stats.skipped <= batch, inbox.stats  # the batch sent twice, no more
    assert received - total == inbox.stats.skipped
    assert database.scalar(f"SELECT count(DISTINCT n) FROM {effects}") == total
    assert database.scalar(f"SELECT count(*) FROM {effects}") == total


def test_two_relay_processes_at_once_send_everything_exactly_once(
    database: Database, broker: Broker
) -> None:
    outbox = _ready(database)
    queue = broker.queue()
    total = 600 if broker.kind == "rabbitmq" else 300  # moto is slow
    with database.connect() as conn:
        for n in range(total):
            outbox.publish(conn, queue, {"n": n})
    argv = melange_command(
        "relay", "--dsn", database.dsn, "--table", database.table,
        "--backend-url", broker.url, "--batch-size", "20", "--poll-interval", "0.1",
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MELANGE_BACKEND_URL"}
    relays = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        bodies = broker.receive(queue, total, quiet=3, limit=240)
    finally:
        outputs = []
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
            out, err = relay.communicate(timeout=30)
            outputs.append((relay.returncode, out, err))
    assert [code for code, _, _ in outputs] == [0, 0], outputs
    counts = [int(out.split("sending ")[1].split()[0]) for _, out, _ in outputs]
    # None sent twice. (Which relay sends what is up to timing: on a loaded machine one of them
    # may start after the other has sent everything.)
    assert sum(counts) == total, counts
    assert sorted(b["n"] for b in bodies) == list(range(total))
    assert database.rows() == 0


def test_consume_write_publish_under_repeated_consumer_crashes_has_each_effect_once(
    database: Database, broker: Broker
) -> None:
    _ready(database)
    inbound, outbound = broker.queue(), broker.queue()
    total = 25
    with database.connect() as conn:
        conn.execute(f"CREATE TABLE effects_{database.table} (n INTEGER NOT NULL)")
    SQLDeduplicationCache(database.dsn, table=f"done_{database.table}").close()
    publisher = QueuePublisher(JsonSerializer(), broker.backend)
    for n in range(total):
        publisher.publish(inbound, {"n": n})
    relay = Relay(database.dsn, broker.backend, table=database.table, poll_interval=0.2)
    relay.start()
    crashes, runs = 0, 0
    try:
        while runs < 80:
            runs += 1
            done = subprocess.run(
                _worker("consume", database, broker, queue=inbound, out=outbound, seed=runs,
                        crash_after_commit=0.15, crash_before_commit=0.1,
                        idle=4 if broker.kind == "rabbitmq" else 7),
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                break
            assert done.returncode == -signal.SIGKILL, done.stderr
            crashes += 1
        assert done.returncode == 0, "the consumer never finished"
        effects = database.scalar(f"SELECT count(*) FROM effects_{database.table}")
        distinct = database.scalar(f"SELECT count(DISTINCT n) FROM effects_{database.table}")
        assert (effects, distinct) == (total, total)
        bodies = broker.receive(outbound, total, quiet=3)
    finally:
        relay.stop()
    assert crashes >= 2, "the test did not crash the consumer"
    assert sorted(b["n"] for b in bodies) == list(range(total))
    assert database.rows() == 0


def test_melange_relay_needs_a_database_and_hides_its_password() -> None:
    missing = run_melange("relay", "--backend-url", "memory://", env={"MELANGE_OUTBOX_DSN": ""})
    assert missing.returncode == 1 and "--dsn" in missing.stderr
    down = run_melange(
        "relay", "--dsn", "postgresql://app:s3cr3t-pw@127.0.0.1:1/orders",
        "--backend-url", "memory://", "--once",
    )  # fmt: skip
    assert down.returncode == 1
    assert "outbox database failed" in down.stderr
    assert "s3cr3t-pw" not in down.stderr + down.stdout
