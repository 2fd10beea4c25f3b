"""Moving messages to their queue's dead-letter queue: :class:`DeadLetters`.

A message goes there with failure headers, published to the dead-letter queue and then
acknowledged, in three cases: ``dead_letter`` asks for it; a receive finds it delivered more
often than the queue's ``max_receive_count`` (the consumer's ``max_deliver`` allows one
delivery more, which is moved instead of handed out); or the server advises that it reached
``max_deliver`` while nobody moved it (its receiver died holding the last delivery).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from melange.backends.nats.connection import explain
from melange.backends.nats.publishing import Publisher
from melange.backends.nats.receipts import Settler, receipt_of
from melange.backends.nats.session import Session
from melange.backends.nats.streams import Streams
from melange.backends.nats.topology import CONSUMER, Names, QueueSettings
from melange.backends.nats.wire import backstop_headers, stored_message
from melange.models import Message

logger = logging.getLogger("melange.backends.nats")


class DeadLetters:
    """Moves a backend's messages to dead-letter queues, and listens to the server's
    ``max_deliver`` advisories of the queues that have one."""

    def __init__(
        self,
        session: Session,
        names: Names,
        streams: Streams,
        publisher: Publisher,
        settler: Settler,
    ) -> None:
        self._session = session
        self._names = names
        self._streams = streams
        self._publisher = publisher
        self._settler = settler
        #: Queues whose max_deliver advisories this backend listens to (on its current client).
        self.watched: set[str] = set()

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Publish a copy with ``headers`` to the queue's dead-letter queue, then acknowledge.

        Returns ``False``, leaving the message unsettled, when the queue has none.
        """
        receipt = receipt_of(message)
        settings = await self._streams.queue_settings(receipt.queue)
        if settings.dead_letter_queue is None:
            return False
        await self.move(message, settings, headers)
        return True

    async def move(
        self, message: Message, settings: QueueSettings, headers: Mapping[str, str]
    ) -> None:
        """Publish a copy of ``message`` with ``headers`` to the dead-letter queue of
        ``settings``, then acknowledge it."""
        dlq = str(settings.dead_letter_queue)
        subject = self._names.queue_subject(dlq)
        await self._publisher.publish(subject, [message], dlq, None, False, headers)
        await self._settler.settle(receipt_of(message), b"+ACK")

    async def watch(self, queue: str) -> None:
        """Listen to the server's advisory for a message of ``queue`` that reached
        ``max_deliver`` while nobody moved it (its receiver died holding the last delivery):
        the server sends it when a later pull finds the message, and one listener of the
        queue group (in any process) moves the message to the dead-letter queue."""
        stream = self._names.queue_stream(queue)

        async def op(nc: Client) -> None:
            await nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{CONSUMER}",
                queue=f"{self._names.prefix}-dead-letters",
                cb=self._on_max_deliveries,
            )

        await self._session.run(op)
        self.watched.add(queue)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, sequence = str(advisory["stream"]), int(advisory["stream_seq"])
            queue = self._names.queue_of_stream(stream)
            if queue is None:
                return
            settings = await self._streams.queue_settings(queue)
            if settings.dead_letter_queue is None:
                return
            session = self._session
            nc = await session.client()
            try:
                answer = await session.api(nc, f"STREAM.MSG.GET.{stream}", {"seq": sequence})
            except nats.js.errors.NotFoundError:
                return  # settled meanwhile
            message = stored_message(api.RawStreamMsg.from_response(answer["message"]))
            deliveries = int(advisory.get("deliveries") or settings.max_receive_count + 1)
            dlq = settings.dead_letter_queue
            headers = backstop_headers(queue, deliveries)
            subject = self._names.queue_subject(dlq)
            await self._publisher.publish(subject, [message], dlq, None, False, headers)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await session.api(nc, f"STREAM.MSG.DELETE.{stream}", {"seq": sequence})
            logger.warning(
                "message %s of %s reached its delivery limit unsettled: moved to %s",
                message.message_id,
                queue,
                dlq,
            )
        except Exception as exc:  # a callback of the client: report, never raise
            logger.error("could not dead-letter a message past max_deliver: %s", explain(exc))


__all__ = ["DeadLetters"]
