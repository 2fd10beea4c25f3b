"""Where a Kafka queue's message waits for a later attempt, and when it moves.

Kafka commits one offset per partition: a record held back keeps every record after it
uncommitted, and whoever reads the partition after a crash or a rebalance delivers those
again, including originals that failed and whose retry was already written (their failure
would then start a second line of retries). So on a standard queue nothing waits in the
partitions the queue's messages arrive on:

- a message that failed (``nack``), or is given back for a while (``release`` with a delay),
  is published to the queue's retry topic as a retry record carrying its failed attempts
  and when it is due, and the original is settled (:func:`later_attempt`);
- the consumer holding a retry record that is not due yet, once records behind it are
  settled, publishes it again at the end of the retry topic and settles the one it held
  (:func:`moved`), at most every :data:`MOVE_INTERVAL` seconds while consuming, and for
  every partition it gives up in a rebalance or at close. The retry topic only carries
  failures, so these moves are few beside the queue's traffic.

A crash or a rebalance therefore delivers again only what was being handled (and what was
settled after it on that partition), never a message whose next attempt is already written.
On a FIFO queue a message waits in its consumer instead, ahead of the rest of its group,
whose order a copy elsewhere would break.
"""

from __future__ import annotations

import time

from melange.backends.kafka.topology import QueueSpec
from melange.backends.kafka.wire import Receipt, RecordHeaders, encode_headers, retry_headers
from melange.models import Message

#: Longest time, while consuming, between two looks for held records to move.
MOVE_INTERVAL = 0.2
#: A held record due within this many seconds is not moved: it is handed out first.
MOVE_MARGIN = 0.5

#: A record to publish: the message and its record headers.
Record = tuple[Message, RecordHeaders]


def later_attempt(
    spec: QueueSpec, message: Message, receipt: Receipt, delay: float, failed: bool
) -> tuple[str, Record] | None:
    """The retry topic and retry record of a message handed back for a later attempt
    (``failed``: one more failed attempt), or ``None`` when it stays with its consumer: on
    a FIFO queue, or given back unprocessed to be handed out again at once."""
    retries = spec.retries
    if retries is None or (not failed and delay <= 0):
        return None
    count = receipt.failed + 1 if failed else receipt.failed
    headers = encode_headers(message, retry_headers(count, time.time() + max(0.0, delay)))
    return retries, (message, headers)


def moved(message: Message, due: float) -> Record:
    """The copy of a held retry record (due at ``due``, a ``time.monotonic()`` value) that
    goes to the end of the retry topic: the same message, failed attempts and due time."""
    receipt = message.metadata
    failed = receipt.failed if isinstance(receipt, Receipt) else 0
    not_before = time.time() + max(0.0, due - time.monotonic())
    return message, encode_headers(message, retry_headers(failed, not_before))


__all__ = ["MOVE_INTERVAL", "MOVE_MARGIN", "Record", "later_attempt", "moved"]
