"""The claim check: large payloads go to a payload store, messages carry a reference.

Give the same :class:`ClaimCheck` (or one on the same store) to the publishers and to the
dispatchers::

    claim_check = ClaimCheck(S3PayloadStore("payloads-bucket"))
    publisher = QueuePublisher(JsonSerializer(), backend, claim_check=claim_check)
    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, claim_check=claim_check)

A publisher stores a message's serialized body when it is larger than the threshold (by
default what the backend takes, :attr:`BackendCapabilities.max_message_size`, less room for
headers) and sends the reference instead (see :mod:`melange.claimcheck.wire`). A dispatcher
fetches the body before decoding, as an effect of its engine (on a worker thread under the
asyncio dispatcher); a payload it cannot fetch or check is retried as a failed attempt, then
dead-lettered with the reason. The payload of a queue message is removed once the message is
acknowledged (off the event loop under the asyncio dispatcher); the payload of a topic
message (one copy per subscribed queue, none of which knows of the others) and of a
dead-lettered message (kept for redriving) is removed by the lifetime, with
:meth:`ClaimCheck.purge_expired` or the store's own expiry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from melange.backends.interfaces import BackendCapabilities
from melange.claimcheck.store import PayloadStore, PayloadUnreadableError, new_key
from melange.claimcheck.wire import PLACEHOLDER, Reference, Removal
from melange.dispatch.decisions import Action, Verdict
from melange.dispatch.middleware import Middleware
from melange.models import CLAIM_CHECK, CLAIM_CHECK_SERIALIZER_ID, Message

logger = logging.getLogger("melange.claimcheck")

#: Bytes of a backend's size limit left for headers and the wire's own fields when the
#: threshold is derived from it.
HEADROOM = 8 * 1024
#: The default lifetime of a stored payload: 15 days, beyond SQS's longest retention (14).
DEFAULT_LIFETIME = 15 * 24 * 3600.0


class ClaimCheck:
    """Stores large payloads in ``store`` and resolves the references to them.

    Args:
        store: Where payloads go; every publisher and consumer must reach the same one.
        threshold: Bodies (with their headers) larger than this many bytes are stored. By
            default the backend's ``max_message_size`` less :data:`HEADROOM`; on a backend
            without a limit nothing is stored unless a threshold is given.
        lifetime: Seconds a stored payload is kept at most, for :meth:`purge_expired`; keep
            it longer than the longest a message can wait in a queue (its retention) or in a
            dead-letter queue before being redriven.
        remove_on_ack: Remove a queue message's payload once the message is acknowledged.
            ``False`` leaves every payload to its lifetime: for a broker that may deliver an
            acknowledged message again (an SQS standard queue's rare duplicates), whose late
            copy would otherwise find its payload gone.
    """

    def __init__(
        self,
        store: PayloadStore,
        *,
        threshold: int | None = None,
        lifetime: float = DEFAULT_LIFETIME,
        remove_on_ack: bool = True,
    ) -> None:
        if threshold is not None and (isinstance(threshold, bool) or threshold < 0):
            raise ValueError(f"threshold must be a number of bytes, got {threshold!r}")
        if lifetime <= 0:
            raise ValueError(f"lifetime must be positive seconds, got {lifetime!r}")
        self.store = store
        self.threshold = threshold
        self.lifetime = lifetime
        self.remove_on_ack = remove_on_ack
        self._removal = _Removal(self)

    def __repr__(self) -> str:
        return f"ClaimCheck({self.store!r}, threshold={self.threshold!r})"

    # -- publishing -------------------------------------------------------------------------

    def limit_for(self, capabilities: BackendCapabilities) -> int | None:
        """The threshold on a backend with ``capabilities`` (``None``: nothing is stored)."""
        if self.threshold is not None:
            return self.threshold
        if capabilities.max_message_size is None:
            return None
        return max(0, capabilities.max_message_size - HEADROOM)

    def wants(self, message: Message, capabilities: BackendCapabilities) -> bool:
        """Whether ``message`` is too large to send as it is (a reference never is)."""
        limit = self.limit_for(capabilities)
        if limit is None or CLAIM_CHECK in message.headers:
            return False
        # Cheap first: a body shorter in characters than the limit in bytes may still be
        # over it in UTF-8, so only then is it encoded.
        size = sum(len(k) + len(v) for k, v in message.headers.items())
        if len(message.content) * 4 + size <= limit:
            return False
        return len(message.content.encode("utf-8")) + size > limit

    def check_in(self, message: Message, fanned_out: bool = False) -> Message:
        """Store ``message``'s body and return the message that carries its reference
        (same id, manifest, headers and FIFO keys). ``fanned_out``: the message goes to a
        topic, one copy per subscribed queue, so its payload is left to its lifetime.
        Blocking; raises :class:`~melange.claimcheck.store.PayloadStoreError`."""
        remove: Removal = "ack" if self.remove_on_ack and not fanned_out else "expire"
        data = message.content.encode("utf-8")
        key = new_key()
        self.store.put(key, data)
        reference = Reference.of(key, data, message.serializer_id, remove)
        headers = dict(message.headers)
        headers[CLAIM_CHECK] = reference.encode()
        sent = Message(
            message.message_id,
            PLACEHOLDER,
            serializer_id=CLAIM_CHECK_SERIALIZER_ID,
            manifest=message.manifest,
            headers=headers,
            group_id=message.group_id,
            deduplication_id=message.deduplication_id,
        )
        logger.debug(
            "payload of message %s (%d bytes) stored as %s", message.message_id, len(data), key
        )
        return sent

    # -- consuming --------------------------------------------------------------------------

    def fetch(self, message: Message) -> Message:
        """The message ``message`` refers to: a copy with the stored body and serializer id,
        without the reference header (``message`` itself is left as received, so that a
        dead-lettered copy still carries the reference). Blocking; raises
        :class:`~melange.claimcheck.store.PayloadMissingError`,
        :class:`~melange.claimcheck.store.PayloadUnreadableError` or
        :class:`~melange.claimcheck.store.PayloadStoreError`."""
        reference = Reference.decode(message.headers[CLAIM_CHECK])
        data = self.store.get(reference.key)
        reference.verify(data)
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadUnreadableError(f"payload {reference.key!r} is not UTF-8 text") from None
        headers = {k: v for k, v in message.headers.items() if k != CLAIM_CHECK}
        return Message(
            message.message_id,
            content,
            message.metadata,
            reference.serializer_id,
            message.manifest,
            headers,
            message.attempt,
            message.group_id,
            message.deduplication_id,
        )

    @property
    def middleware(self) -> Middleware:
        """The dispatcher middleware that removes a queue message's payload once the message
        is acknowledged (a dispatcher given this claim check runs it)."""
        return self._removal

    def settled(self, message: Message, verdict: Verdict) -> None:
        """Remove the payload of ``message`` if ``verdict`` settled it for good and its
        reference allows it (``"ack"``: the only copy was acknowledged). Failures are logged:
        the lifetime removes what is left."""
        text = message.headers.get(CLAIM_CHECK)
        if text is None or verdict.action is not Action.ACK:
            return
        try:
            reference = Reference.decode(text)
            if reference.remove == "ack":
                self.store.delete(reference.key)
        except Exception:
            logger.warning(
                "could not remove the claim-checked payload of message %s; its lifetime will",
                message.message_id,
                exc_info=True,
            )

    def purge_expired(self, now: float | None = None) -> int:
        """Remove the payloads stored more than :attr:`lifetime` seconds before ``now`` (by
        default the time now); returns how many. Run it now and then (a cron job, a periodic
        task), or use the store's own expiry (an S3 lifecycle rule)."""
        return self.store.purge((time.time() if now is None else now) - self.lifetime)


class _Removal(Middleware):
    """Removes payloads once their messages are acknowledged (see :meth:`ClaimCheck.settled`)."""

    def __init__(self, claim_check: ClaimCheck) -> None:
        self._claim_check = claim_check

    def __repr__(self) -> str:
        return f"<claim check removal of {self._claim_check!r}>"

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        if verdict.action is not Action.ACK or CLAIM_CHECK not in message.headers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._claim_check.settled(message, verdict)  # a dispatcher's thread: at once
        else:
            # The asyncio dispatcher's loop: the store is reached with blocking calls.
            loop.run_in_executor(None, self._claim_check.settled, message, verdict)


def is_claim_checked(message: Message | Any) -> bool:
    """Whether ``message`` carries a claim check reference instead of its payload."""
    return isinstance(message, Message) and CLAIM_CHECK in message.headers


__all__ = ["DEFAULT_LIFETIME", "HEADROOM", "ClaimCheck", "is_claim_checked"]
