"""``melange demo``: the examples end to end, one process per service, on SQLite."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, run_melange

from melange.backends.urls import backend_from_url
from melange.cli.demo import _Console, _examples, run_example
from service_check import require_service


def test_demo_runs_both_examples_across_processes_and_exits_zero() -> None:
    result = run_melange("demo", timeout=120)

    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Each service ran in its own process.
    pids = re.findall(r"started the (\w+) service \(pid (\d+)", out)
    assert len(pids) == 5
    assert len({pid for _, pid in pids}) == 5
    # Who published and who consumed what, as it happened.
    assert re.search(r"orders\s+published OrderCreated\(.*'A-1001'", out)
    assert re.search(r"payment\s+consumed OrderCreated A-1001: charging alice 12\.50", out)
    assert re.search(r"payment\s+payment gateway timed out charging A-1002: the message will", out)
    assert re.search(r"payment\s+consumed OrderCreated A-1002 \(delivery 2\): charging", out)
    assert re.search(r"stock\s+cannot reserve S-2003: out of stock", out)
    assert re.search(
        r"payment\s+consumed StockReservationFailed S-2003: compensating, refunded 30\.00", out
    )
    assert re.search(r"stock\s+stopped after receiving 3 message\(s\): 2 acknowledged, 1 retr", out)
    # The summary.
    assert re.search(r"A-1003\s+OrderRejected\s+OrderRejected", out)
    assert re.search(r"S-2003\s+OrderCancelled\s+OrderCancelled\s+out of stock.*refunded", out)
    assert "retried deliveries: 2, compensations: 1" in out
    assert "every flow ended as expected" in out


def test_demo_refuses_a_backend_that_processes_cannot_share() -> None:
    result = run_melange("demo", "--backend-url", "memory://")
    assert_one_line_error(result, "memory:// cannot be shared between processes")


def test_demo_fails_when_a_flow_ends_otherwise_than_expected(tmp_path: Path) -> None:
    examples = _examples()
    wrong = dataclasses.replace(
        examples["saga"], expected={**examples["saga"].expected, "S-2003": "OrderApproved"}
    )
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    backend = backend_from_url(url)
    try:
        result = run_example(wrong, backend, url, _Console(), timeout=60)
    finally:
        backend.close_connection()

    assert not result.ok
    assert ("S-2003", "OrderApproved", "OrderCancelled") in [row[:3] for row in result.rows]
    assert result.compensations == 1


def test_demo_fails_when_a_service_process_dies(tmp_path: Path) -> None:
    example = _examples()["payment"]
    broken = dataclasses.replace(
        example, services=(*example.services, ("ghost", "melange.examples.no_such_service"))
    )
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    backend = backend_from_url(url)
    try:
        result = run_example(broken, backend, url, _Console(), timeout=60)
    finally:
        backend.close_connection()

    assert not result.ok


@pytest.mark.rabbitmq
def test_demo_runs_the_saga_on_rabbitmq() -> None:
    host, port = require_service("rabbitmq")

    result = run_melange(
        "demo",
        "--example",
        "saga",
        "--backend-url",
        f"amqp://guest:guest@{host}:{port}/",
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "every flow ended as expected" in result.stdout
