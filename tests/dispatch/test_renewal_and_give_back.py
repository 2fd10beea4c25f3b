"""A message given back for a delayed retry comes back after that delay, even when a renewal
of its lease was on its way to the broker at that moment (the renewal used to land after
the give-back and hide the message for a whole lease), under every driver, on both embedded
brokers with renewals slowed down as a remote broker's are."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from drivers import Driver

from melange import (
    Consumer,
    FailurePolicy,
    InMemoryMessagingBackend,
    JsonSerializer,
    QueuePublisher,
)
from melange.backends.interfaces import MessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.models import Message

#: A lease of 3 s is renewed after 1 s; each renewal takes 1 s to reach the broker.
LEASE = 3.0
RENEWAL_TRIP = 1.0
#: The first attempt fails at 1.3 s, while the renewal sent at 1 s is on its way.
FAILS_AFTER = 1.3
#: A retry 1 s after the failure: due after the renewal lands (2 s).
POLICY = FailurePolicy(max_attempts=3, initial_delay=1.0, jitter=0.0)


class SlowRenewals(InMemoryMessagingBackend):
    """The in-memory broker, with lease renewals that take a while to arrive (as a request
    to a remote broker does)."""

    def extend_visibility(self, message: Message, seconds: float) -> None:
        time.sleep(RENEWAL_TRIP)
        super().extend_visibility(message, seconds)


class SlowSQLiteRenewals(SQLiteBackend):
    """The SQLite broker, with lease renewals that take a while to arrive."""

    def extend_visibility(self, message: Message, seconds: float) -> None:
        time.sleep(RENEWAL_TRIP)
        super().extend_visibility(message, seconds)


def _slow_backend(kind: str, tmp_path: Path) -> MessagingBackend:
    if kind == "memory":
        return SlowRenewals(visibility_timeout=LEASE)
    return SlowSQLiteRenewals(tmp_path / "broker.sqlite3", visibility_timeout=LEASE)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_retry_delay_holds_while_a_lease_renewal_is_on_its_way(
    driver: Driver, kind: str, tmp_path: Path
) -> None:
    backend = _slow_backend(kind, tmp_path)
    # FIFO: a delayed retry keeps the message leased to this consumer until the delay ends,
    # so a renewal landing late pushes its return back.
    backend.declare_queue("orders.fifo", fifo=True)
    QueuePublisher(JsonSerializer(), backend).publish("orders.fifo", {"n": 1}, message_group_id="g")
    starts: list[float] = []

    def handle(payload: Any) -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            time.sleep(FAILS_AFTER)
            raise TimeoutError("transient")

    dispatcher = driver.make(
        backend=backend,
        consumers=[Consumer(on_message=handle, name="orders")],
        failure_policy=POLICY,
    )
    deadline = time.monotonic() + 15
    while len(starts) < 2 and time.monotonic() < deadline:
        driver.consume_event(dispatcher, "orders.fifo", wait_seconds=0.5)
    assert len(starts) == 2, starts
    # The give-back waits for the renewal on its way (until 2 s), then the 1 s delay runs:
    # back about 1.7 s after the failure, not a whole lease after the renewal landed (3.7 s).
    assert starts[1] - (starts[0] + FAILS_AFTER) < 3.0
