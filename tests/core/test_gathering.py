"""When a receiver pauses to take a busy queue's messages together."""

from __future__ import annotations

from melange.backends.gathering import BUSY_WINDOW, GATHER_SECONDS, BusyQueues


def test_a_quiet_queue_is_received_from_at_once() -> None:
    queues = BusyQueues(lambda: 100.0)
    assert not queues.busy("orders")
    assert queues.gather_seconds("orders") == 0.0


def test_a_queue_that_just_delivered_gathers_until_its_window_passes() -> None:
    # A frozen clock: real time passing between two lines must not decide the outcome.
    now = [100.0]
    queues = BusyQueues(lambda: now[0])
    queues.delivered("orders")
    now[0] += BUSY_WINDOW / 2
    assert queues.gather_seconds("orders") == GATHER_SECONDS
    # Other queues are not busy because one is.
    assert queues.gather_seconds("invoices") == 0.0
    now[0] += 2 * BUSY_WINDOW
    assert queues.gather_seconds("orders") == 0.0


def test_the_pause_is_short_beside_the_window() -> None:
    # A queue fed faster than once per window pays the pause; it must stay well below it.
    assert 0 < GATHER_SECONDS <= BUSY_WINDOW / 5
