"""``melange demo``: the examples end to end, one process per service, on SQLite."""

from __future__ import annotations

import re

from cli_support import assert_one_line_error, run_melange


def test_demo_runs_both_examples_across_processes_and_exits_zero() -> None:
    result = run_melange("demo", timeout=120)

    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Each service ran in its own process.
    pids = re.findall(r"started the (\w+) service \(pid (\d+)", out)
    assert len(pids) == 5
    assert len({pid for _, pid in pids}) == 5
    # Who published and who consumed what, as it happened.
    assert re.search(r"orders\s+published OrderCreated\(", out)
    assert re.search(r"payment\s+charging alice 25\.00 for A-1002 \(delivery 2\)", out)
    assert re.search(r"stock\s+cannot reserve S-2003: out of stock", out)
    assert re.search(r"payment\s+compensating S-2003: refunded 30\.00 to carol", out)
    # The summary.
    assert re.search(r"A-1003\s+OrderRejected\s+OrderRejected", out)
    assert re.search(r"S-2003\s+OrderCancelled\s+OrderCancelled\s+out of stock.*refunded", out)
    assert "retried deliveries: 2, compensations: 1" in out
    assert "every flow ended as expected" in out


def test_demo_refuses_a_backend_that_processes_cannot_share() -> None:
    result = run_melange("demo", "--backend-url", "memory://")
    assert_one_line_error(result, "memory:// cannot be shared between processes")
