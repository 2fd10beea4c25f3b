"""A message given back for a delayed retry comes back after that delay, even when a renewal
of its lease was on its way to the broker at that moment (the renewal used to land after
the give-back and hide the message for a whole lease), under both dispatchers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from melange import (
    Consumer,
    FailurePolicy,
    InMemoryMessagingBackend,
    JsonSerializer,
    MessageDispatcher,
    QueuePublisher,
)
from melange.aio import AsyncMessageDispatcher
from melange.models import Message

#: A lease of 3 s is renewed after 1 s; each renewal takes 1 s to reach the broker.
LEASE = 3.0
RENEWAL_TRIP = 1.0


class SlowRenewals(InMemoryMessagingBackend):
    """The in-memory broker, with lease renewals that take a while to arrive (as a request
    to a remote broker does)."""

    def extend_visibility(self, message: Message, seconds: float) -> None:
        time.sleep(RENEWAL_TRIP)
        super().extend_visibility(message, seconds)


def _setup() -> tuple[SlowRenewals, list[float], Consumer]:
    backend = SlowRenewals(visibility_timeout=LEASE)
    # FIFO: a delayed retry keeps the message leased to this consumer until the delay ends,
    # so a late renewal pushes its return back.
    backend.declare_queue("orders.fifo", fifo=True)
    QueuePublisher(JsonSerializer(), backend).publish("orders.fifo", {"n": 1}, message_group_id="g")
    starts: list[float] = []

    def handle(payload: Any) -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            time.sleep(1.3)  # past the first renewal, sent at 1 s, arriving at 2 s
            raise TimeoutError("transient")

    return backend, starts, Consumer(on_message=handle, name="orders")


#: A retry 1 s after the failure at 1.3 s: due after the renewal lands (2 s).
POLICY = FailurePolicy(max_attempts=3, initial_delay=1.0, jitter=0.0)


def _gap(starts: list[float]) -> float:
    assert len(starts) == 2, starts
    failed_at = starts[0] + 1.3
    return starts[1] - failed_at


@pytest.mark.timeout(60)
def test_a_retry_delay_holds_under_the_threaded_dispatcher() -> None:
    backend, starts, consumer = _setup()
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[consumer], failure_policy=POLICY
    )
    try:
        deadline = time.monotonic() + 15
        while len(starts) < 2 and time.monotonic() < deadline:
            dispatcher.consume_event("orders.fifo", wait_seconds=0.5)
        # The give-back waits for the renewal on its way (until 2 s), then the 1 s delay runs:
        # back about 1.7 s after the failure, not a whole lease after the renewal landed
        # (3.7 s after it).
        assert _gap(starts) < 2.7
    finally:
        dispatcher.close()


@pytest.mark.timeout(60)
def test_a_retry_delay_holds_under_the_asyncio_dispatcher() -> None:
    backend, starts, consumer = _setup()

    async def handle(payload: Any) -> None:
        await asyncio.to_thread(consumer.process, payload)

    dispatcher = AsyncMessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_message=handle, name="orders")],
        failure_policy=POLICY,
    )

    async def run() -> None:
        deadline = time.monotonic() + 15
        while len(starts) < 2 and time.monotonic() < deadline:
            await dispatcher.consume_event("orders.fifo", wait_seconds=0.5)

    try:
        asyncio.run(run())
        assert _gap(starts) < 2.7
    finally:
        dispatcher.close()
