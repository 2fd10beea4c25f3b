"""``melange queues`` and ``melange dlq`` on RabbitMQ: on the shared broker, whose management
plugin may be off (counts by passive declaration, peeks by ``basic.get``, a clear message for
what needs the plugin), and on a throwaway broker started here with the plugin on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from cli_support import assert_one_line_error, run_melange

from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq.inspect import MANAGEMENT_URL_ENV, ManagementAPI, management_for
from melange.serializers.json import JsonSerializer
from service_check import require_service

pytestmark = pytest.mark.rabbitmq

#: A body that would recolour a terminal printed as it is.
HOSTILE = "\x1b[31mred\x1b[0m\x07"


class CardDeclined(Exception):
    pass


@dataclass
class Broker:
    url: str
    queue: str
    dlq: str
    management: bool
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``melange ARGS --backend-url URL`` on this broker."""
        return run_melange(*args, "--backend-url", self.url, env=self.env)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def managed_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A throwaway RabbitMQ node with its management plugin, on free loopback ports, in a
    directory of its own (its own Erlang cookie too): (AMQP URL, management URL)."""
    server = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin")
    if server is None:
        _unavailable("SERVICE MISSING: rabbitmq-server is not installed")
    home = tmp_path_factory.mktemp("rabbitmq")
    amqp, management, distribution = _free_port(), _free_port(), _free_port()
    (home / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (home / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management}\n"
    )
    env = {
        **os.environ,
        "HOME": str(home),
        "RABBITMQ_NODENAME": f"melange-test-{uuid.uuid4().hex[:8]}@localhost",
        "RABBITMQ_DIST_PORT": str(distribution),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_PID_FILE": str(home / "pid"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(home / "feature_flags"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(home / "plugins"),
    }
    process = subprocess.Popen(
        [server],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{management}"
    try:
        deadline = time.monotonic() + 120
        while not management_for_url(api).available():
            if process.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"SERVICE MISSING: a throwaway RabbitMQ did not start (see {home})")
            time.sleep(0.5)
        yield f"amqp://guest:guest@127.0.0.1:{amqp}/", api
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def management_for_url(api: str) -> ManagementAPI:
    return ManagementAPI(api, "guest", "guest", "/", timeout=2.0)


@pytest.fixture(params=["shared broker", "broker with the management plugin"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """``payments`` with two payments dead-lettered into its DLQ, one message ready and one
    waiting in a retry queue; every queue deleted at the end."""
    env: dict[str, str] = {}
    if request.param == "shared broker":
        host, port = require_service("rabbitmq")
        url = f"amqp://guest:guest@{host}:{port}/"
    else:
        url, api = request.getfixturevalue("managed_rabbitmq")
        env[MANAGEMENT_URL_ENV] = api
    suffix = uuid.uuid4().hex[:10]
    queue, dlq = f"payments-{suffix}", f"payments-{suffix}-dlq"
    backend = RabbitMQBackend(url)
    try:
        factory = MessagingBackendFactory(backend)
        wrapper = factory.init_queue(queue, dead_letter_queue_name=dlq)
        publisher = QueuePublisher(JsonSerializer(), backend)
        publisher.publish(queue, {"order": 1, "note": HOSTILE})
        publisher.publish(queue, {"order": 2})

        def charge(payment: dict[str, object]) -> None:
            # The failure header then holds the control characters as they are.
            raise CardDeclined(f"order {payment['order']} declined {payment.get('note', '')}")

        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Consumer(charge, name="billing.charge")],
            failure_policy=FailurePolicy(max_attempts=1),
        )
        # A receive hands out what has arrived: under load, one message may come alone.
        deadline = time.monotonic() + 30
        while dispatcher.stats.dead_lettered < 2 and time.monotonic() < deadline:
            dispatcher.consume_event(queue)
        assert dispatcher.stats.dead_lettered == 2
        publisher.publish(queue, {"order": 3})
        publisher.publish(queue, {"order": 4})
        # One of them waits 30 s in a retry queue; the other is given back at once.
        received: list[object] = []
        while len(received) < 2:
            received.extend(backend.retrieve_messages(wrapper, wait_seconds=1, max_messages=2))
        backend.nack(received[0], 30.0)  # type: ignore[arg-type]
        backend.nack(received[1], 0.0)  # type: ignore[arg-type]
        management = management_for(backend._params).available() or bool(env)
    finally:
        backend.close_connection()
    yield Broker(url, queue, dlq, management, env)
    cleaner = RabbitMQBackend(url)
    try:
        for name in (queue, dlq):
            cleaner.delete_queue(cleaner.get_queue(name))
    finally:
        cleaner.close_connection()


def test_stats_count_ready_and_delayed_messages(broker: Broker) -> None:
    result = broker.run("queues", "stats", broker.queue, "--json")

    assert result.returncode == 0, result.stderr
    (stats,) = json.loads(result.stdout)["queues"]
    assert stats["name"] == broker.queue
    assert stats["ready"] == 1
    assert stats["delayed"] == 1  # the message waiting in the 30 s retry queue
    assert stats["total"] == 2
    # Without the management API AMQP cannot tell messages held by consumers.
    assert stats["in_flight"] == (0 if broker.management else None)


def test_dlq_show_names_the_failures_with_control_characters_escaped(broker: Broker) -> None:
    table = broker.run("dlq", "show", broker.dlq, "--body")
    as_json = broker.run("dlq", "show", broker.dlq, "--json")

    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout
    assert "\\x1b[31mred" in table.stdout
    assert table.stdout.count(broker.queue) >= 2
    assert "2 of 2 message(s) shown" in table.stdout
    assert "failing consumer(s): billing.charge" in table.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert "\x1b" not in as_json.stdout
    document = json.loads(as_json.stdout)
    assert document["total"] == 2
    orders = sorted(json.loads(m["body"])["order"] for m in document["messages"])
    assert orders == [1, 2]
    first = next(m for m in document["messages"] if json.loads(m["body"])["order"] == 1)
    assert json.loads(first["body"])["note"] == HOSTILE  # exact once decoded
    assert first["from_queue"] == broker.queue
    assert first["consumer"] == "billing.charge"
    assert "CardDeclined" in first["exception"]
    if broker.management:
        assert document["sources"] == [broker.queue]
    else:
        assert document["sources"] is None


def test_peeking_leaves_the_dead_letters_in_place(broker: Broker) -> None:
    for _ in range(2):
        assert broker.run("dlq", "show", broker.dlq).returncode == 0

    result = broker.run("queues", "stats", broker.dlq, "--json")

    assert json.loads(result.stdout)["queues"][0]["ready"] == 2


def test_redrive_moves_the_dead_letters_back(broker: Broker) -> None:
    result = broker.run("dlq", "redrive", broker.dlq, "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "queue": broker.dlq,
        "moved": 2,
        "left": 0,
        "duplicates": 0,
    }
    stats = broker.run("queues", "stats", broker.queue, broker.dlq, "--json")
    counts = {q["name"]: q for q in json.loads(stats.stdout)["queues"]}
    assert counts[broker.queue]["ready"] == 3
    assert counts[broker.dlq]["total"] == 0


def test_purge_deletes_ready_and_waiting_messages(broker: Broker) -> None:
    result = broker.run("queues", "purge", broker.queue, "-y", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"queue": broker.queue, "deleted": 2}
    stats = broker.run("queues", "stats", broker.queue, "--json")
    assert json.loads(stats.stdout)["queues"][0]["total"] == 0


def test_a_missing_queue_is_named(broker: Broker) -> None:
    result = broker.run("queues", "stats", broker.queue + "-nope")

    assert_one_line_error(result, broker.queue + "-nope")


def test_listing_without_the_management_plugin_says_what_it_needs(broker: Broker) -> None:
    if broker.management:
        result = broker.run("queues", "list", "--json")
        assert result.returncode == 0, result.stderr
        names = [q["name"] for q in json.loads(result.stdout)["queues"]]
        assert broker.queue in names and broker.dlq in names
        assert not any(".melange-retry-" in name for name in names)
        return
    result = broker.run("queues", "list")

    assert_one_line_error(
        result, "management plugin", "rabbitmq-plugins enable rabbitmq_management"
    )
    assert "guest:guest" not in result.stderr
