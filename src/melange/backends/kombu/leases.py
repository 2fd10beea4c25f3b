"""Receiving one message at a time (``basic_get``) and, on kombu's Redis transport, how long
what was received stays leased; messages held for a delayed give-back.

On Redis kombu keeps a received message in an ``unacked`` index until it is acknowledged,
and puts it back once its entry is older than kombu's visibility timeout: a lease is the
entry's time, moved so that the message comes back when the lease ends. kombu restores those
only in its event loop, which ``basic_get`` does not run, so the backend sweeps the index
itself. A message given back after a delay stays unacknowledged (and leased) in the process
until the delay ends, so a crash meanwhile hands it back at once.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu.transport import virtual as kombu_virtual

from melange.backends.kombu.connection import NOT_FOUND, ChannelLost, Link, raw_key, reply_code
from melange.backends.kombu.wire import Receipt, from_delivery
from melange.exceptions import BackendError, QueueNotFoundError
from melange.models import Message

# kombu has no type information: its classes are used untyped.
_VirtualQoS: Any = kombu_virtual.QoS

#: kombu's Redis transport takes a message off its list (``RPOP``) and records it as
#: unacknowledged in a second round trip: a connection lost in between loses the message.
#: This script does both at once, in kombu's own layout (``unacked`` hash: tag -> [payload,
#: exchange, routing key]; ``unacked_index``: tag -> time), keeping the payload verbatim.
#: KEYS: unacked, unacked_index, then the queue's lists by priority; ARGV: the index time.
_REDIS_GET = """
for i = 3, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
        local properties = cjson.decode(item)['properties']
        local tag = properties['delivery_tag']
        local info = properties['delivery_info'] or {}
        local record = '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ','
            .. cjson.encode(info['routing_key'] or '') .. ']'
        redis.call('HSET', KEYS[1], tag, record)
        redis.call('ZADD', KEYS[2], ARGV[1], tag)
        return item
    end
end
return false
"""

#: Seconds between two sweeps of kombu's Redis ``unacked`` index by one backend.
_SWEEP_SECONDS = 1.0


class Leases:
    """Messages received with ``basic_get`` on a
    :class:`~melange.backends.kombu.connection.Link`, their leases where the transport has
    some, and the messages held for a delayed give-back.

    Args:
        link: The backend's connection.
        leasing: Whether the transport leases what it delivers (kombu's Redis transport).
        visibility_timeout: The default lease, in seconds (kombu's visibility timeout).
        forget_queue: Called with a queue the broker says does not exist.
    """

    def __init__(
        self,
        link: Link,
        *,
        leasing: bool,
        visibility_timeout: float,
        forget_queue: Callable[[str], None],
    ) -> None:
        self._link = link
        self.leasing = leasing
        self._visibility_timeout = visibility_timeout
        self._forget_queue = forget_queue
        #: The leases of the queues declared with one of their own (queue -> seconds).
        self.per_queue: dict[str, float] = {}
        #: Messages held for a delayed give-back: (generation, delivery tag) -> its timer.
        self._timers: dict[tuple[int, str], threading.Timer] = {}
        self._last_sweep = 0.0

    def get(self, channel: Any, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages of ``queue``, taken one by one with ``basic_get`` on the
        receiving channel (under the lock), leased on Redis."""
        lease = self.per_queue.get(queue, self._visibility_timeout) if self.leasing else None
        link = self._link
        got: list[Message] = []
        while len(got) < limit:
            try:
                if self.leasing:
                    delivered = self._redis_get(channel, queue, lease)
                else:
                    delivered = channel.basic_get(queue, no_ack=False)
            except link.connection.channel_errors as exc:
                if link.amqp:
                    link.lose_channel("consume")
                    if reply_code(exc) == NOT_FOUND:
                        self._forget_queue(queue)
                        raise QueueNotFoundError(queue) from None
                    raise ChannelLost("consume", exc) from exc
                raise
            if delivered is None:
                break
            tag = delivered.delivery_tag
            got.append(from_delivery(delivered, Receipt(queue, tag, link.generation, lease)))
        return got

    def _redis_get(self, channel: Any, queue: str, lease: float | None) -> Any:
        """``basic_get`` on kombu's Redis transport, with the message taken and recorded as
        unacknowledged in one script (see ``_REDIS_GET``), leased for ``lease`` seconds."""
        keys = [
            raw_key(channel, channel.unacked_key),
            raw_key(channel, channel.unacked_index_key),
            *(raw_key(channel, channel._q_for_pri(queue, p)) for p in channel.priority_steps),
        ]
        score = time.time() + (lease or self._visibility_timeout) - self._visibility_timeout
        item = channel.client.eval(_REDIS_GET, len(keys), *keys, score)
        if not item:
            return None
        delivered = channel.Message(json.loads(item), channel=channel)
        # Known to the channel as delivered (kombu's own append would write Redis again).
        _VirtualQoS.append(channel.qos, delivered, delivered.delivery_tag)
        return delivered

    def lease(self, channel: Any, tag: Any, seconds: float) -> None:
        """Hold a message on Redis for ``seconds`` from now: kombu gives an unacknowledged
        message back once its entry in the ``unacked`` index is older than kombu's
        visibility timeout, so the entry's time is moved to make that ``seconds`` from now."""
        score = time.time() + seconds - self._visibility_timeout
        channel.client.zadd(channel.unacked_index_key, {tag: score}, xx=True)

    def sweep(self) -> None:
        """Give back, on Redis, the messages whose lease ran out (kombu does it only in its
        event loop, which ``basic_get`` does not run)."""
        if not self.leasing or time.monotonic() - self._last_sweep < _SWEEP_SECONDS:
            return
        self._last_sweep = time.monotonic()

        def sweep(consume: Any, publish: Any) -> None:
            consume.qos.restore_visible(num=100, interval=1)

        self._link.io(sweep, "giving back expired leases")

    def hold(
        self, message: Message, receipt: Receipt, delay: float, give_back: Callable[[], None]
    ) -> None:
        """Keep the message unacknowledged in this process for ``delay`` seconds, then
        ``give_back()`` (a crash meanwhile hands it back to the broker at once: nothing is
        lost)."""
        link = self._link
        if self.leasing:
            link.io(
                lambda consume, publish: self.lease(consume, receipt.delivery_tag, delay + 30.0),
                f"holding message {message.message_id!r}",
            )
        key = (receipt.generation, str(receipt.delivery_tag))

        def later() -> None:
            with link.lock:
                if self._timers.pop(key, None) is None:
                    return
            with contextlib.suppress(BackendError, QueueNotFoundError):
                give_back()

        timer = threading.Timer(delay, later)
        timer.daemon = True
        with link.lock:
            self._timers[key] = timer
        timer.start()

    def cancel_timer(self, receipt: Receipt) -> None:
        """The message of ``receipt`` is settled: no delayed give-back for it."""
        if not self._timers:  # the common case: no message is held for a delayed give-back
            return
        with self._link.lock:
            timer = self._timers.pop((receipt.generation, str(receipt.delivery_tag)), None)
        if timer is not None:
            timer.cancel()

    def cancel_timers(self) -> None:
        """Give back no held message (under the lock: the backend closes, and its channels
        give them back to the broker)."""
        timers = list(self._timers.values())
        self._timers.clear()
        for timer in timers:
            timer.cancel()


__all__ = ["Leases"]
