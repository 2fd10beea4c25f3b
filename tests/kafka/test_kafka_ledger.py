"""Which held records a Kafka consumer moves to the end of its retry topic (no broker needed).

A held record keeps its partition's committed offset before it; the ledger names it for a
move only when that keeps settled records uncommitted, and only when it is not about to be
handed out anyway.
"""

from __future__ import annotations

import time

from melange.backends.kafka.ledger import Ledger
from melange.backends.kafka.retries import later_attempt, moved
from melange.backends.kafka.topology import QueueSpec, retry_topic
from melange.backends.kafka.wire import Receipt, retry_state
from melange.models import Message

KEY = ("__melange.retry.orders", 0)
NOW = 1_000.0


def _fetch(ledger: Ledger, offset: int, due: float = 0.0, failed: int = 1) -> Message:
    receipt = Receipt("orders", KEY[0], KEY[1], offset, ledger.assignment_of(KEY) or 0, failed)
    message = Message(f"m{offset}", "{}", receipt, attempt=failed + 1)
    ledger.add(KEY, offset, message, due)
    return message


def _ledger(fifo: bool = False) -> Ledger:
    ledger = Ledger(fifo)
    # Its owner calls it with its lock held: this test's thread holds it throughout.
    ledger.lock.acquire()
    ledger.assigned([KEY])
    return ledger


def _receipt(message: Message) -> Receipt:
    assert isinstance(message.metadata, Receipt)
    return message.metadata


def test_a_held_record_with_a_settled_one_behind_it_is_named_and_the_commit_passes_both() -> None:
    ledger = _ledger()
    _fetch(ledger, 0, due=NOW + 60)
    behind = _fetch(ledger, 1)
    assert ledger.take(10, NOW) == [behind]
    ledger.settle(_receipt(behind))  # the held record keeps the committed offset at 0
    stuck = ledger.stuck(NOW, margin=0.5)
    assert [(m.message_id, due) for m, due in stuck] == [("m0", NOW + 60)]
    # Not handed out while it is being moved, even once due.
    assert ledger.take(10, NOW + 120) == []
    assert ledger.settle(_receipt(stuck[0][0])) == (KEY, 2)


def test_a_held_record_with_nothing_settled_behind_it_stays() -> None:
    ledger = _ledger()
    _fetch(ledger, 0, due=NOW + 60)
    assert ledger.stuck(NOW, margin=0.5) == []
    # Behind a message being handled, it holds nothing back yet either.
    ledger2 = _ledger()
    first = _fetch(ledger2, 0)
    assert ledger2.take(1, NOW) == [first]
    _fetch(ledger2, 1, due=NOW + 60)
    _fetch(ledger2, 2)
    ledger2.settle(_receipt(ledger2.take(1, NOW)[0]))
    assert ledger2.stuck(NOW, margin=0.5) == []


def test_a_record_due_within_the_margin_is_handed_out_rather_than_moved() -> None:
    ledger = _ledger()
    _fetch(ledger, 0, due=NOW + 0.2)
    behind = _fetch(ledger, 1)
    assert ledger.take(1, NOW) == [behind]
    ledger.settle(_receipt(behind))
    assert ledger.stuck(NOW, margin=0.5) == []
    assert [m.message_id for m in ledger.take(10, NOW + 0.2)] == ["m0"]


def test_every_held_record_of_the_prefix_moves_together() -> None:
    ledger = _ledger()
    _fetch(ledger, 0, due=NOW + 60)
    _fetch(ledger, 1, due=NOW + 30)
    behind = _fetch(ledger, 2)
    ledger.settle(_receipt(ledger.take(1, NOW)[0]))
    assert behind.message_id == "m2"
    stuck = ledger.stuck(NOW, margin=0.5)
    assert sorted(m.message_id for m, _ in stuck) == ["m0", "m1"]
    commits = [ledger.settle(_receipt(m)) for m, _ in stuck]
    assert commits[-1] == (KEY, 3)


def test_a_fifo_queue_moves_nothing() -> None:
    ledger = _ledger(fifo=True)
    _fetch(ledger, 0, due=NOW + 60)
    behind = _fetch(ledger, 1)
    ledger.settle(_receipt(ledger.take(10, NOW)[0]))
    assert behind.message_id == "m1"
    assert ledger.stuck(NOW, margin=0.5) == []


def test_records_that_could_not_be_moved_are_held_again_until_due() -> None:
    ledger = _ledger()
    _fetch(ledger, 0, due=NOW + 60)
    ledger.settle(_receipt(_take_one(ledger, _fetch(ledger, 1))))
    stuck = ledger.stuck(NOW, margin=0.5)
    ledger.hold_again(stuck)
    assert ledger.next_due(NOW) == 60
    assert [m.message_id for m in ledger.take(10, NOW + 60)] == ["m0"]


def _take_one(ledger: Ledger, expected: Message) -> Message:
    assert ledger.take(1, NOW) == [expected]
    return expected


def test_a_moved_copy_keeps_its_failed_attempts_and_due_time() -> None:
    ledger = _ledger()
    message = _fetch(ledger, 0, due=NOW, failed=3)
    copy, headers = moved(message, due=time.monotonic() + 30)
    failed, not_before = retry_state(headers)
    assert copy is message
    assert failed == 3
    assert 29 < not_before - time.time() <= 30.5


def test_later_attempts_go_to_the_retry_topic_except_on_fifo_queues_and_at_once_releases() -> None:
    ledger = _ledger()
    message = _fetch(ledger, 0, failed=1)
    receipt = _receipt(message)
    standard = QueueSpec("orders")
    fifo = QueueSpec("orders.fifo", fifo=True)
    nacked = later_attempt(standard, message, receipt, 5.0, failed=True)
    assert nacked is not None and nacked[0] == retry_topic("orders")
    assert retry_state(nacked[1][1])[0] == 2
    released = later_attempt(standard, message, receipt, 5.0, failed=False)
    assert released is not None and retry_state(released[1][1])[0] == 1
    assert later_attempt(standard, message, receipt, 0.0, failed=False) is None
    assert later_attempt(fifo, message, receipt, 5.0, failed=True) is None
    assert standard.sources == ["orders", retry_topic("orders")]
    assert fifo.sources == ["orders.fifo"]


def test_a_long_queue_name_gets_a_legal_distinct_retry_topic() -> None:
    long_a, long_b = "a" * 249, "a" * 248 + "b"
    assert len(retry_topic(long_a)) <= 249
    assert retry_topic(long_a) != retry_topic(long_b)
    assert retry_topic("orders") == "__melange.retry.orders"
