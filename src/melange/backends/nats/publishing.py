"""Publishing to JetStream and waiting for its acknowledgements: :class:`Publisher`.

A publish is acknowledged by JetStream once the message is stored: the acknowledgement comes
to the backend's inbox subscription like the answers to its pull requests, and wakes the
publish waiting for it; a batch is pipelined and waits for all of them at once. A subject no
stream takes is answered by the server's "no responders" status: the queue or topic is gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from melange.backends.nats.session import Session
from melange.backends.nats.streams import Streams
from melange.backends.nats.topology import Names
from melange.backends.nats.wire import encode_body, encode_headers
from melange.exceptions import (
    BatchPublishError,
    MessageTooLargeError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message

#: Seconds a publish waits for JetStream's acknowledgement (then it is repeated: see
#: Session.run).
_PUBLISH_TIMEOUT = 5.0
#: The reason :meth:`Publisher._publish_one` gives when no stream takes the subject.
_NO_STREAM = "no stream"
#: The status of the server's answer to a request nobody subscribes to.
_NO_RESPONDERS = "503"


class Publisher:
    """Publishes a backend's messages and matches JetStream's acknowledgements to them."""

    def __init__(self, session: Session, names: Names, streams: Streams) -> None:
        self._session = session
        self._names = names
        self._streams = streams
        # Publishes waiting for their acknowledgement, by the last token of their reply
        # subject on the inbox (see _publish_one).
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._reply_serial = 0

    async def publish(
        self,
        subject: str | None,
        messages: Sequence[Message],
        queue: str | None,
        topic: str | None,
        batch: bool = False,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish ``messages`` to ``subject`` (a queue's), or to ``topic``'s subject for each
        message's manifest, and wait until JetStream stored them all.

        Raises:
            QueueNotFoundError, TopicNotFoundError: No stream takes the subject.
            MessageTooLargeError: A message is larger than the server's ``max_payload``.
            PublishError: JetStream refused the message (``BatchPublishError`` in a batch).
        """
        if not messages:
            return
        max_payload = self._session.max_payload
        items: list[tuple[str, bytes, dict[str, str]]] = []
        for message in messages:
            body = encode_body(message.content)
            headers = encode_headers(message, extra_headers)
            size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
            if size > max_payload:
                raise MessageTooLargeError(size, max_payload, "NATS")
            target = subject or self._names.topic_subject(str(topic), message.manifest)
            items.append((target, body, headers))

        async def op(nc: Client) -> list[str | None]:
            if len(items) == 1:
                [(target, body, headers)] = items
                return [await self._publish_one(nc, target, body, headers)]
            published = (self._publish_one(nc, t, b, h) for t, b, h in items)
            return list(await asyncio.gather(*published))

        outcome = await self._session.run(op)
        if any(reason == _NO_STREAM for reason in outcome):
            if topic is not None:
                self._streams.forget_topic(topic)
                raise TopicNotFoundError(topic)
            self._streams.forget_queue(str(queue))
            raise QueueNotFoundError(str(queue))
        failures = {i: reason for i, reason in enumerate(outcome) if reason is not None}
        if failures:
            if batch:
                raise BatchPublishError(failures)
            raise PublishError(f"NATS refused the message: {failures[0]}")

    async def _publish_one(
        self, nc: Client, subject: str, body: bytes, headers: dict[str, str]
    ) -> str | None:
        """Publish and wait for JetStream's acknowledgement; ``None``, or why it was refused.

        The acknowledgement comes to the backend's inbox subscription, as the answers to its
        pull requests do, and wakes this call directly: nats-py's ``request`` costs a turn
        of the loop more (its ``wait_for``) and draws random bytes for each reply subject.
        """
        self._reply_serial += 1
        token = f"p{self._reply_serial}"
        answered: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._replies[token] = answered
        try:
            await nc.publish(subject, body, reply=f"{self._session.inbox}.{token}", headers=headers)
            async with asyncio.timeout(_PUBLISH_TIMEOUT):
                reply = await answered
        except nats.errors.MaxPayloadError:
            return "larger than the server's max_payload"
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            self._replies.pop(token, None)
        if not reply.data and reply.headers and reply.headers.get("Status") == _NO_RESPONDERS:
            return _NO_STREAM
        try:
            answer = json.loads(reply.data)
        except ValueError:
            return f"unexpected answer {reply.data[:80]!r}"
        error = answer.get("error")
        if error:
            return f"{error.get('code')} {error.get('description')}"
        return None

    def answered(self, token: str, msg: Msg) -> bool:
        """Hand ``msg``, which came to the inbox's ``token``, to the publish waiting for it;
        whether one was (else it is no publish's acknowledgement)."""
        answered = self._replies.pop(token, None)
        if answered is None:
            return False
        if not answered.done():
            answered.set_result(msg)
        return True


__all__ = ["Publisher"]
