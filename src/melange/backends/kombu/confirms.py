"""Publishing on the kombu backend's publishing channel, and the broker's publisher confirms.

On AMQP the publishing channel is in confirm mode (``confirm_publish``, on by default): each
publish gets the next sequence number and the broker answers with a ``basic.ack`` or a
``basic.nack`` for it. py-amqp's own ``basic_publish`` would wait for each confirm before the
next publish; here publishes are written without waiting and their confirms counted by
sequence number, so several are in flight (a batch costs one round trip) and an asyncio
publisher can write from its loop and await them there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from melange.backends.kombu.connection import ChannelLost, Link
from melange.backends.kombu.wakeups import Wakeups
from melange.backends.kombu.wire import CONTENT_ENCODING, CONTENT_TYPE, Outgoing
from melange.exceptions import PublishError, WouldBlock

#: Bytes of message bodies an asyncio publisher writes from its loop at most: a larger
#: publish could fill the socket's buffer and wait for the broker to read, so it takes a thread.
_INLINE_BYTES = 64 * 1024


class Confirms:
    """The publishes written on a :class:`~melange.backends.kombu.connection.Link`'s
    publishing channel and, in confirm mode, the broker's answer to each (a watcher of the
    link: a new publishing channel counts from the start).

    Args:
        link: The backend's connection.
        wakeups: Whose waiters are told when a confirm arrives (an asyncio publisher waits
            for it on its loop while another thread reads the connection).
    """

    def __init__(self, link: Link, wakeups: Wakeups) -> None:
        self._link = link
        self._wakeups = wakeups
        #: Publisher confirms on AMQP (``confirm_publish``, on by default): whether the
        #: publishing channel is in confirm mode, the sequence number of its last publish,
        #: and the outcome of each publish not collected yet (None while the broker has not
        #: answered, then True for an ack, False for a nack). Several can be in flight.
        self.confirming = False
        self._published = 0
        self._confirms: dict[int, bool | None] = {}
        #: The routing keys of mandatory publishes the broker returned (no queue took them).
        self.returned: list[str] = []

    # -- the link's channels --------------------------------------------------------------------

    def connected(self) -> None:
        """Nothing to do before the channels open."""

    def publishing_opened(self, channel: Any) -> None:
        """Put a new publishing channel in confirm mode, on AMQP when the connection asks
        for confirms, with the confirms counted here by sequence number (py-amqp's own
        publish would wait for each confirm before the next publish)."""
        if not self._link.amqp:
            return
        channel.events["basic_return"].add(self._on_return)
        self._published = 0
        self._confirms = {}
        self.confirming = bool(getattr(self._link.raw, "confirm_publish", False))
        if self.confirming:
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.confirm_select()
            channel._confirm_selected = True  # so py-amqp never selects it again

    def channel_lost(self, which: str) -> None:
        """A lost publishing channel confirms nothing more."""
        if which == "publish":
            self._confirms = {}

    # -- the broker's answers -------------------------------------------------------------------

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, False)

    def _settle(self, delivery_tag: int, multiple: bool, outcome: bool) -> None:
        # Called while a thread reads the connection, under the lock.
        confirms = self._confirms
        if multiple:
            for seq, state in list(confirms.items()):
                if seq <= delivery_tag and state is None:
                    confirms[seq] = outcome
        elif delivery_tag in confirms:
            confirms[delivery_tag] = outcome
        if self._wakeups.waiters:
            self._wakeups.call_waiters()

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        # A mandatory publish found no queue (py-amqp calls this before the confirm).
        self.returned.append(routing_key)

    def confirmed(self, seqs: Sequence[int]) -> bool:
        """Whether the broker answered every publish of ``seqs`` (under the lock); those are
        then forgotten.

        Raises:
            PublishError: the broker refused some of them (``basic.nack``).
            ConnectionError: the publishing channel was lost before it answered (``io``
                publishes again on a new connection).
        """
        confirms = self._confirms
        if any(confirms.get(seq, False) is None for seq in seqs):
            return False
        outcomes = [confirms.pop(seq, None) for seq in seqs]
        if None in outcomes:
            raise ConnectionError("the publishing channel was lost before the broker confirmed")
        refused = outcomes.count(False)
        if refused:
            raise PublishError(
                f"the broker refused {refused} of {len(seqs)} published message(s) (basic.nack)"
            )
        return True

    # -- publishing -----------------------------------------------------------------------------

    def write(
        self, publish: Any, outgoing: Outgoing, exchange: str, key: str, mandatory: bool = False
    ) -> int | None:
        """Publish on the publishing channel without waiting for the broker's confirm; the
        sequence number to wait for (:meth:`wait_for`), or ``None`` when the channel has no
        confirms."""
        # What kombu's Producer.publish ends with, without its per-call work around it (the
        # body is already bytes, nothing is declared, there is no retry policy: ``io``
        # retries), which cost as much as the rest of the backend's publish.
        message = publish.prepare_message(
            outgoing.body,
            0,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            outgoing.headers,
            dict(outgoing.properties),
        )
        if not self.confirming:
            self._link.guard(
                "publish",
                lambda: publish.basic_publish(
                    message, exchange=exchange, routing_key=key, mandatory=mandatory
                ),
            )
            return None
        self._published += 1
        seq = self._published
        self._confirms[seq] = None
        # py-amqp's basic_publish waits for this confirm alone; its unconfirmed write lets
        # several publishes be in flight, confirmed by sequence number.
        self._link.guard(
            "publish",
            lambda: publish._basic_publish(
                message, exchange=exchange, routing_key=key, mandatory=mandatory
            ),
        )
        return seq

    def wait_for(self, seqs: Sequence[int | None]) -> None:
        """Read from the connection until the broker confirmed each publish (under the
        lock; a read that times out is a lost connection, and ``io`` publishes again)."""
        pending = [seq for seq in seqs if seq is not None]
        if not pending:
            return
        raw = self._link.raw
        while not self.confirmed(pending):
            self._link.guard("publish", lambda: raw.drain_events(timeout=None))

    def send(
        self, publish: Any, outgoing: Outgoing, exchange: str, key: str, mandatory: bool = False
    ) -> None:
        """Publish on the publishing channel (confirmed by the broker on AMQP)."""
        self.wait_for([self.write(publish, outgoing, exchange, key, mandatory)])

    # -- publishing from an event loop ----------------------------------------------------------

    def publish_now(self, targets: Sequence[tuple[Outgoing, str, str]]) -> list[int]:
        """Publish ``(message, exchange, routing key)`` targets without waiting for the
        confirms (an asyncio publisher, on its loop); their sequence numbers, to be awaited
        with :meth:`confirmed_now`. A connection found broken is dropped and the returned
        numbers then never confirm (the caller publishes again).

        Raises:
            WouldBlock: not on AMQP with confirms, the connection is not open or in use by
                another thread, or the messages are large enough for a write to wait.
        """
        if not self.confirming or sum(len(t[0].body) for t in targets) > _INLINE_BYTES:
            raise WouldBlock("this publish may wait for the broker")
        link = self._link
        with link.free(opened=True):
            publish = link.publish
            seqs: list[int] = []
            try:
                for outgoing, exchange, key in targets:
                    seq = self.write(publish, outgoing, exchange, key)
                    seqs.append(-1 if seq is None else seq)
            except ChannelLost as lost:
                link.lose_channel(lost.which)
                raise link.channel_error(lost.error, "publishing") from None
            except link.recoverable:
                link.reset()
                seqs.append(-1)  # never confirmed: published again
            return seqs

    def confirmed_now(self, seqs: Sequence[int]) -> bool:
        """Read what the connection received, without waiting, and tell whether the broker
        confirmed every publish of ``seqs`` (an asyncio publisher, on its loop).

        Raises:
            WouldBlock: another thread is using the connection (it tells the waiters when
                it reads a confirm).
            PublishError: the broker refused some of them.
            ConnectionError: the connection was lost before it confirmed them all.
        """
        link = self._link
        with link.free(opened=False):
            if link.raw is not None and not link.closed:
                try:
                    link.drain()
                except (*link.recoverable, *link.connection.channel_errors):
                    link.reset()
            return self.confirmed(seqs)


__all__ = ["Confirms"]
