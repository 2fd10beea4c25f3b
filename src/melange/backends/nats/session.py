"""The connection of one NATS backend to its server: :class:`Session`.

A session holds one nats-py client at a time, opened on first use and again once it closed,
with one subscription on the backend's inbox that takes every answer addressed to it
(JetStream's acknowledgements of publishes, the messages and statuses answering pull
requests, pull markers). Operations go through :meth:`Session.run`, which repeats them while
the client reconnects, within the backend's ``operation_timeout``; closing waits, within
bounds, for the server to confirm the acknowledgements and pull requests sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from melange.backends.nats.connection import explain
from melange.backends.nats.topology import DEFAULT_MAX_PAYLOAD
from melange.exceptions import BackendConnectionError

logger = logging.getLogger("melange.backends.nats")

T = TypeVar("T")

#: Turns of the loop :meth:`Session.flushed` waits, at most, for the client's writer.
_FLUSH_TURNS = 10
#: Seconds closing waits, at most, for the server to confirm the acknowledgements sent.
_CLOSE_FLUSH_TIMEOUT = 5.0
#: Seconds between the looks closing takes at the connection while it waits for that.
_CLOSE_FLUSH_LOOK = 0.02
#: Errors after which an operation is worth repeating on a (re)connected client.
RETRYABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
    OSError,
)

#: Errors of sending an acknowledgement: the message comes back when its lease ends.
SEND_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE, BackendConnectionError)


class Session:
    """One backend's connection to the server: a nats-py client, (re)opened when needed.

    Args:
        describe: The servers, as the user is shown them (no credentials).
        options: The keyword arguments of ``nats.connect`` (see
            :func:`~melange.backends.nats.connection.connect_options`).
        connect_timeout: Seconds a connection attempt may take.
        operation_timeout: Seconds an operation may take, reconnections included.
        on_answer: Called with every message that comes to the backend's inbox.
        on_connect: Called once a new client is connected.
    """

    def __init__(
        self,
        describe: str,
        options: dict[str, Any],
        *,
        connect_timeout: float,
        operation_timeout: float,
        on_answer: Callable[[Msg], Awaitable[None]],
        on_connect: Callable[[], None],
    ) -> None:
        self.describe = describe
        self.options = options
        # Logged by this backend, which knows whether it is closing.
        self.options["disconnected_cb"] = self._on_disconnected
        self.options["reconnected_cb"] = self._on_reconnected
        self.connect_timeout = float(connect_timeout)
        self.operation_timeout = float(operation_timeout)
        self._on_answer = on_answer
        self._on_connect = on_connect
        #: The server's largest message, learnt when connecting.
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.nc: Client | None = None
        self.js: Any = None
        #: The event loop of the client (the last one that connected).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock: asyncio.Lock | None = None
        self.closed = False
        self.inbox = ""
        # Whether an acknowledgement or a pull request went out that no ping confirmed since
        # (see confirm_sent).
        self.unconfirmed = False
        # The subscription to the answers of the pull requests (see client).
        self._answers: Subscription | None = None

    async def client(self) -> Client:
        """The connected client: a new one when there is none, or it closed."""
        nc = self.nc
        if nc is not None and not nc.is_closed:
            return nc
        if self.closed:
            raise BackendConnectionError(f"the NATS backend for {self.describe} is closed")
        loop = asyncio.get_running_loop()
        if self._connect_lock is None or self.loop is not loop:
            self._connect_lock = asyncio.Lock()
            self.loop = loop
        async with self._connect_lock:
            nc = self.nc
            if nc is not None and not nc.is_closed:
                return nc
            # nats-py would try a first connection for ever when reconnecting is unbounded.
            budget = self.connect_timeout * 2 + 1.0
            try:
                nc = await asyncio.wait_for(nats.connect(**self.options), budget)
            except TimeoutError:
                raise BackendConnectionError(
                    f"could not connect to NATS at {self.describe} within {budget:.0f}s"
                ) from None
            except Exception as exc:
                raise BackendConnectionError(
                    f"could not connect to NATS at {self.describe}: {explain(exc)}"
                ) from None
            self.max_payload = nc.max_payload or DEFAULT_MAX_PAYLOAD
            self.inbox = nc.new_inbox()
            # One subscription for every pull request's answers: <inbox>.<serial>.
            self._answers = await nc.subscribe(f"{self.inbox}.*", cb=self._on_answer)
            self.js = nc.jetstream(timeout=min(10.0, self.operation_timeout))
            self.nc = nc
            self._on_connect()
            return nc

    async def _on_disconnected(self) -> None:
        if not self.closed:
            logger.warning("connection to NATS at %s lost; reconnecting", self.describe)

    async def _on_reconnected(self) -> None:
        logger.warning("reconnected to NATS at %s", self.describe)

    async def run(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``fn`` with the client, again while the connection is being re-established.

        Operations are safe to repeat: declarations are idempotent, and a repeated publish
        may duplicate a message (at-least-once), unless it has a deduplication id.
        """
        deadline = time.monotonic() + self.operation_timeout
        while True:
            nc = await self.client()
            try:
                return await fn(nc)
            except RETRYABLE as exc:
                if self.closed or time.monotonic() >= deadline:
                    raise BackendConnectionError(
                        f"NATS at {self.describe} did not complete the operation within "
                        f"{self.operation_timeout:.0f}s: {explain(exc)}"
                    ) from None
                logger.debug("NATS operation failed (%s); repeating it", explain(exc))
                await asyncio.sleep(0.1)

    async def api(self, nc: Client, subject: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """A JetStream API request; raises ``nats.js.errors.APIError`` for an error answer."""
        try:
            reply = await nc.request(
                f"$JS.API.{subject}", json.dumps(request).encode(), timeout=5.0
            )
        except nats.errors.NoRespondersError:
            raise nats.js.errors.ServiceUnavailableError from None
        answer: dict[str, Any] = json.loads(reply.data)
        if "error" in answer:
            raise nats.js.errors.APIError.from_error(answer["error"])
        return answer

    async def flushed(self) -> None:
        """Return once the client handed what it queued (acknowledgements) to the socket:
        its writer task runs at the next turn of the loop; no round trip to the server."""
        nc = self.nc
        for _ in range(_FLUSH_TURNS):
            if nc is None or not nc.is_connected or nc.pending_data_size == 0:
                return
            await asyncio.sleep(0)

    async def answers_handled(self) -> None:
        """Let the callbacks of the pull requests' answers that arrived run (bounded)."""
        answers = self._answers
        deadline = time.monotonic() + _CLOSE_FLUSH_TIMEOUT / 10
        while answers is not None and answers.pending_msgs and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        for _ in range(_FLUSH_TURNS):  # the last callback's own turns
            await asyncio.sleep(0)

    async def confirm_sent(self, nc: Client) -> bool:
        """Wait for the server to confirm what was sent (a ping's answer, which comes after
        what was sent before it, and after what the server sent before it), while the
        connection lasts; whether it did.

        Only acknowledgements and pull requests need it: every publish and request already
        waited for its answer. Over a lost connection there is nothing to wait for (what it
        holds is dropped with it, and those messages come back when their leases end), and
        nats-py forgets the ping when it reconnects, so the wait ends once the client sees
        the connection go.
        """
        if not self.unconfirmed or not nc.is_connected:
            return False
        self.unconfirmed = False
        flush = asyncio.ensure_future(nc.flush(timeout=int(_CLOSE_FLUSH_TIMEOUT)))
        deadline = time.monotonic() + _CLOSE_FLUSH_TIMEOUT
        try:
            while not flush.done() and nc.is_connected and time.monotonic() < deadline:
                await asyncio.wait((flush,), timeout=_CLOSE_FLUSH_LOOK)
        finally:
            if not flush.done():
                flush.cancel()
                logger.debug("closing without the confirmation of NATS at %s", self.describe)
        if not flush.done() or flush.cancelled():
            return False  # (a cancelled task is done only once it ran its cancellation)
        if (error := flush.exception()) is not None:
            logger.debug("flushing before the close failed: %s", explain(error))
            return False
        return True

    async def close(self, nc: Client | None) -> None:
        """Let the client go, and close ``nc`` (the client when closing began), bounded."""
        self.nc = None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)


__all__ = ["RETRYABLE", "SEND_ERRORS", "Session"]
