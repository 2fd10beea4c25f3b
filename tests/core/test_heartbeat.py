"""The heartbeat renews leases every third of them, counted from when each lease began."""

from __future__ import annotations

import threading
import time

from melange.dispatch.leases import Heartbeat
from melange.models import Message


def _recorder() -> tuple[list[tuple[str, float]], threading.Event, Heartbeat]:
    renewed: list[tuple[str, float]] = []
    done = threading.Event()

    def extend(message: Message, seconds: float) -> None:
        renewed.append((message.message_id, time.monotonic()))
        done.set()

    return renewed, done, Heartbeat(extend, lambda message: 3.0)


def test_a_receive_answered_late_has_its_first_renewal_at_once() -> None:
    renewed, done, heartbeat = _recorder()
    try:
        # The lease began 2.5 s ago (a slow receive): renewing a third of it after now would
        # come after the lease ran out.
        added = time.monotonic()
        heartbeat.add_batch([Message("late", "{}")], since=added - 2.5)
        assert done.wait(2.0), "the lease was not renewed"
        assert renewed[0][1] - added < 0.5
    finally:
        heartbeat.close()


def test_watching_again_keeps_the_earlier_renewal() -> None:
    renewed, done, heartbeat = _recorder()
    try:
        message = Message("again", "{}")
        added = time.monotonic()
        heartbeat.add_batch([message], since=added - 2.5)
        heartbeat.add_batch([message])  # the dispatcher watches its batch once more
        assert done.wait(2.0), "the lease was not renewed"
        assert renewed[0][1] - added < 0.5
    finally:
        heartbeat.close()


def test_a_lease_is_renewed_a_third_of_it_after_it_began() -> None:
    renewed, done, heartbeat = _recorder()
    try:
        added = time.monotonic()
        heartbeat.add_batch([Message("fresh", "{}")])
        assert done.wait(3.0), "the lease was not renewed"
        assert 0.9 <= renewed[0][1] - added < 2.5
    finally:
        heartbeat.close()


def test_a_batch_registered_while_the_heartbeat_idles_is_renewed_in_time() -> None:
    renewed, done, heartbeat = _recorder()
    try:
        # A batch settled before its first renewal leaves the renewal thread idle; the next
        # batch, whose renewal falls before the idle thread would look again, wakes it.
        first = Message("settled", "{}")
        heartbeat.add_batch([first])
        heartbeat.remove_batch([first])
        time.sleep(0.2)  # the thread is idle now
        added = time.monotonic()
        heartbeat.add_batch([Message("next", "{}")], since=added - 2.5)
        assert done.wait(2.0), "the lease was not renewed"
        assert [name for name, _ in renewed] == ["next"]
        assert renewed[0][1] - added < 0.5
    finally:
        heartbeat.close()


def test_removing_a_message_hands_back_its_renewal_on_the_way_and_none_starts_after() -> None:
    """A settlement that gives a message back must not be overtaken by a renewal: removal
    returns the renewal already sent, to be waited for, and nothing removed is renewed."""
    started, finish = threading.Event(), threading.Event()
    renewed: list[str] = []

    def extend(message: Message, seconds: float) -> None:
        renewed.append(message.message_id)
        started.set()
        finish.wait(5)  # a renewal request still on its way to the broker

    heartbeat = Heartbeat(extend, lambda message: 0.3)
    try:
        slow, other = Message("slow", "{}"), Message("other", "{}")
        heartbeat.add_batch([slow])
        assert started.wait(2.0), "the lease was not renewed"
        heartbeat.add_batch([other])
        on_way = heartbeat.remove_batch([slow, other])
        assert len(on_way) == 1 and not on_way[0].done()  # the slow one's renewal is out
        finish.set()
        on_way[0].result(timeout=2)
        time.sleep(0.5)  # more than a third of the lease: the other one would be due by now
        assert renewed == ["slow"]
        assert heartbeat.remove_batch([slow]) == []
    finally:
        finish.set()
        heartbeat.close()
