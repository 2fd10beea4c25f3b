"""The saga's services as separate processes on one SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from melange import MessagingBackendFactory, QueuePublisher
from melange.backends.sqlite import SQLiteBackend
from melange.examples.saga.messages import SERIALIZER, OrderApproved, OrderCancelled
from melange.examples.saga.scenario import DEMO_ORDERS, EXPECTED
from melange.examples.saga.topology import (
    ORDER_QUEUE,
    ORDERS_TOPIC,
    declare_topology,
)


def test_saga_services_in_their_own_processes_end_every_saga(tmp_path: Path) -> None:
    db = tmp_path / "saga.db"
    url = f"sqlite:///{db}"
    backend = SQLiteBackend(db)
    declare_topology(backend)
    # A queue that sees how each saga ends.
    MessagingBackendFactory(backend).init_queue(
        "outcomes", ORDERS_TOPIC, filter_events=["OrderApproved", "OrderCancelled"]
    )
    env = {k: v for k, v in os.environ.items() if k != "MELANGE_BACKEND_URL"}
    # Two services run as modules, the third through ``melange consume``.
    commands = [
        [sys.executable, "-m", "melange.examples.saga.order", "--backend-url", url],
        [sys.executable, "-m", "melange.examples.saga.payment", "--backend-url", url],
        [
            sys.executable,
            "-m",
            "melange.cli",
            "consume",
            "melange.examples.saga.stock:create_dispatcher",
            "--queue",
            "saga-stock-service",
            "--backend-url",
            url,
        ],
    ]
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outcomes: dict[str, str] = {}
    try:
        publisher = QueuePublisher(SERIALIZER, backend)
        for command in DEMO_ORDERS:
            publisher.publish(ORDER_QUEUE, command)
        queue = backend.get_queue("outcomes")
        deadline = time.monotonic() + 30
        while len(outcomes) < len(DEMO_ORDERS):
            assert time.monotonic() < deadline, f"sagas still open; ended: {outcomes}"
            assert all(p.poll() is None for p in processes), "a service process died"
            for message in backend.retrieve_messages(queue, wait_seconds=0.5):
                event = SERIALIZER.deserialize(message.content, message.manifest)
                assert isinstance(event, OrderApproved | OrderCancelled)
                outcomes[event.reference] = type(event).__name__
                backend.acknowledge(message)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        results = [p.communicate(timeout=30) for p in processes]

    assert outcomes == EXPECTED
    assert [p.returncode for p in processes] == [0, 0, 0], results
    stock_out = results[2][0]
    assert "[stock] warehouse busy reserving S-2001: the message will be retried" in stock_out
    assert "[stock] consumed PaymentCompleted S-2001 (delivery 2): reserving 1 x book" in stock_out
    payment_out = results[1][0]
    assert "compensating, refunded 30.00 to carol" in payment_out
    assert "[order] stopped after receiving 6 message(s): 6 acknowledged" in results[0][0]


def test_service_process_reports_a_bad_backend_url_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "melange.examples.payment_service.app", "--backend-url", "x://"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown backend URL scheme 'x'")
    assert len(result.stderr.strip().splitlines()) == 1
