"""Performing the engine's effects: with blocking calls, or by awaiting coroutines.

:class:`BlockingPerformer` (the threaded dispatcher's) calls a
:class:`~melange.backends.interfaces.MessagingBackend` and a
:class:`~melange.deduplication.cache.DeduplicationCache`. :class:`AsyncPerformer` (the asyncio
dispatcher's) awaits an :class:`~melange.backends.async_interfaces.AsyncMessagingBackend` and
an :class:`~melange.deduplication.async_cache.AsyncDeduplicationCache`; a blocking backend or
cache reaches it through ``as_async``/``as_async_cache``, which decide where its calls run.
Each performer maps every effect to one call, in one table; the lease bookkeeping of
:class:`~melange.dispatch.effects.Watch` and :class:`~melange.dispatch.effects.Unwatch` is
shared (:func:`watch`, :func:`unwatch`).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import MessagingBackend
from melange.deduplication.async_cache import AsyncDeduplicationCache
from melange.deduplication.cache import DeduplicationCache
from melange.dispatch.effects import (
    Ack,
    Claim,
    DeadLetter,
    Fetch,
    FinishClaim,
    Holds,
    Invoke,
    Nack,
    ProbeCache,
    Receive,
    Release,
    Sleep,
    Unwatch,
    Watch,
)
from melange.dispatch.leases import Heartbeat
from melange.models import Message

#: Effects that never wait for a broker: lease bookkeeping and a look at the backend's state
#: (an :class:`Unwatch` may wait for a renewal already on its way).
LOCAL: tuple[type, ...] = (Holds, Watch, Unwatch)
#: Effects that settle a message with the broker.
SETTLING: tuple[type, ...] = (Ack, Nack, Release, DeadLetter)
#: Effects on the deduplication cache.
CACHE: tuple[type, ...] = (Claim, FinishClaim, ProbeCache)
#: The key :class:`~melange.dispatch.effects.ProbeCache` reads to see that the cache answers.
PROBE_KEY = "melange-cache-probe"


class BlockingPerformer:
    """Performs the engine's effects with blocking calls (see :mod:`melange.dispatch.effects`)."""

    def __init__(
        self,
        backend: MessagingBackend,
        cache: DeduplicationCache | None,
        leases: Heartbeat | None,
        stop: threading.Event,
        fetch: Callable[[Message], Message] | None = None,
    ) -> None:
        self._backend = backend
        self._cache = cache
        self._leases = leases
        self._stop = stop
        # Looked up on the backend at each call, so that wrappers installed later apply.
        self.table: dict[type, Callable[[Any], Any]] = {
            Receive: lambda e: backend.retrieve_messages(e.queue, **e.options),
            Holds: lambda e: backend.holds(e.message),
            Invoke: invoke,
            Claim: self._claim,
            FinishClaim: self._finish_claim,
            ProbeCache: self._probe,
            Watch: self._watch,
            Unwatch: self._unwatch,
            Ack: self._ack,
            Nack: lambda e: backend.nack(e.message, e.delay),
            Release: lambda e: backend.release(e.message, e.delay),
            DeadLetter: lambda e: backend.dead_letter(e.message, e.headers),
            Sleep: lambda e: stop.wait(e.seconds),
        }
        if fetch is not None:
            self.table[Fetch] = lambda e: fetch(e.message)

    def __call__(self, effect: Any) -> Any:
        return self.table[type(effect)](effect)

    def _ack(self, effect: Ack) -> None:
        messages = effect.messages
        if len(messages) == 1:
            self._backend.acknowledge(messages[0])
        else:
            self._backend.acknowledge_batch(messages)

    def _claim(self, effect: Claim) -> Any:
        assert self._cache is not None
        return self._cache.claim(effect.key, effect.lease)

    def _finish_claim(self, effect: FinishClaim) -> None:
        assert self._cache is not None
        if effect.done:
            self._cache.mark_done(effect.key)
        else:
            self._cache.release(effect.key)

    def _probe(self, _effect: ProbeCache) -> None:
        assert self._cache is not None
        self._cache.get(PROBE_KEY)

    def _watch(self, effect: Watch) -> None:
        watch(self._leases, effect, self._cache.renew if self._cache is not None else None)

    def _unwatch(self, effect: Unwatch) -> None:
        unwatch_and_wait(self._leases, effect)


class AsyncPerformer:
    """Performs the engine's effects on an event loop, awaiting the asynchronous contracts.

    :attr:`inline` holds the effects that never block (:data:`LOCAL` but
    :class:`~melange.dispatch.effects.Unwatch`, which may wait for a renewal on its way),
    performed at once;
    :attr:`awaited` the broker and cache effects, awaited. Running a consumer and sleeping
    are the dispatcher's (they depend on its worker threads and on stopping), so it adds
    :class:`~melange.dispatch.effects.Invoke` and :class:`~melange.dispatch.effects.Sleep`.

    Args:
        backend: The backend, through the asynchronous contract.
        cache: The deduplication cache, through the asynchronous contract, if any.
        leases: The heartbeat renewing leases, if any.
        renew_claim: What the heartbeat calls to renew a deduplication claim (from its
            thread; see :class:`~melange.dispatch.leases.LoopBridge`).
        on_watch: Called on the loop before leases are registered (the dispatcher attaches
            its loop bridge there).
        fetch: Fetches a claim-checked payload (blocking: run on a worker thread).
    """

    def __init__(
        self,
        backend: AsyncMessagingBackend,
        cache: AsyncDeduplicationCache | None,
        leases: Heartbeat | None,
        renew_claim: Callable[[str, float], Any] | None,
        on_watch: Callable[[], None],
        fetch: Callable[[Message], Message] | None = None,
    ) -> None:
        self._backend = backend
        self._cache = cache
        self._leases = leases
        self._renew_claim = renew_claim
        self._on_watch = on_watch
        self.inline: dict[type, Callable[[Any], Any]] = {
            Holds: lambda e: backend.holds(e.message),
            Watch: self._watch,
        }
        self.awaited: dict[type, Callable[[Any], Awaitable[Any]]] = {
            Receive: lambda e: backend.retrieve_messages(e.queue, **e.options),
            Ack: self._ack,
            Nack: lambda e: backend.nack(e.message, e.delay),
            Release: lambda e: backend.release(e.message, e.delay),
            DeadLetter: lambda e: backend.dead_letter(e.message, e.headers),
            Claim: self._claim,
            FinishClaim: self._finish_claim,
            ProbeCache: self._probe,
            Unwatch: self._unwatch,
        }
        if fetch is not None:
            # A payload store is reached with blocking calls (boto3, a file, a database).
            self.awaited[Fetch] = lambda e: asyncio.to_thread(fetch, e.message)

    async def _ack(self, effect: Ack) -> None:
        messages = effect.messages
        if len(messages) == 1:
            await self._backend.acknowledge(messages[0])
        else:
            await self._backend.acknowledge_batch(messages)

    async def _claim(self, effect: Claim) -> Any:
        assert self._cache is not None
        return await self._cache.claim(effect.key, effect.lease)

    async def _finish_claim(self, effect: FinishClaim) -> None:
        assert self._cache is not None
        if effect.done:
            await self._cache.mark_done(effect.key)
        else:
            await self._cache.release(effect.key)

    async def _probe(self, _effect: ProbeCache) -> None:
        assert self._cache is not None
        await self._cache.get(PROBE_KEY)

    def _watch(self, effect: Watch) -> None:
        self._on_watch()
        watch(self._leases, effect, self._renew_claim)

    def _unwatch(self, effect: Unwatch) -> Awaitable[None]:
        # Awaited, though almost always with nothing on its way: no coroutine made then.
        on_way = unwatch(self._leases, effect)
        if not on_way:
            return _NOTHING_ON_WAY
        return _await_renewals(on_way)


def watch(
    leases: Heartbeat | None, effect: Watch, renew_claim: Callable[[str, float], Any] | None
) -> None:
    """Register what ``effect`` asks to keep alive with ``leases`` (a claim is renewed with
    ``renew_claim``)."""
    if leases is None:
        return
    if effect.messages:
        leases.add_batch(effect.messages, since=effect.since)
    if effect.key is not None:
        assert renew_claim is not None
        leases.add_claim(effect.key, effect.lease, renew_claim)


#: How long a settlement waits for a lease renewal already on its way, at most (a renewal
#: is one request; one that hangs longer is the broker's problem, reported by its own call).
RENEWAL_WAIT_SECONDS = 10.0


def unwatch(leases: Heartbeat | None, effect: Unwatch) -> list[Future[Any]]:
    """Stop renewing what ``effect`` names; returns the renewals still on their way, which
    must end before what follows (giving a message back, finishing a claim) is sent, or they
    would undo it."""
    if leases is None:
        return []
    on_way: list[Future[Any]] = []
    if effect.messages:
        on_way += leases.remove_batch(effect.messages)
    if effect.key is not None:
        on_way += leases.remove_claim(effect.key)
    return on_way


def unwatch_and_wait(leases: Heartbeat | None, effect: Unwatch) -> None:
    """:func:`unwatch`, then wait for the renewals on their way (on this thread)."""
    on_way = unwatch(leases, effect)
    if on_way:
        futures.wait(on_way, timeout=RENEWAL_WAIT_SECONDS)


class _Done:
    """An awaitable that is already done (awaiting it makes no coroutine)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_NOTHING_ON_WAY = _Done()


async def _await_renewals(on_way: list[Future[Any]]) -> None:
    await asyncio.wait([asyncio.wrap_future(f) for f in on_way], timeout=RENEWAL_WAIT_SECONDS)


def invoke(effect: Invoke) -> None:
    """Run a consumer in this thread; an ``async`` one is refused (it needs an event loop)."""
    result = effect.consumer.process(effect.payload)
    if result is not None and inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # no "coroutine was never awaited" warning
        raise TypeError(
            f"consumer {effect.consumer.name} is asynchronous; run it with "
            "melange.aio.AsyncMessageDispatcher"
        )


__all__ = [
    "CACHE",
    "LOCAL",
    "PROBE_KEY",
    "SETTLING",
    "AsyncPerformer",
    "BlockingPerformer",
    "invoke",
    "unwatch",
    "watch",
]
