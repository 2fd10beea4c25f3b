"""Performing the engine's effects with blocking calls, for both drivers.

The threaded dispatcher performs every effect with this performer. The asyncio dispatcher
uses the same one: it performs the effects that never block (:data:`LOCAL`) on the event
loop, and runs the others on worker threads, or on the loop too for a backend that does not
block (``MessagingBackend.blocking``), so the two drivers cannot differ in what an effect
does, only in where it runs.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.deduplication.cache import DeduplicationCache
from melange.dispatch.effects import (
    Ack,
    Claim,
    DeadLetter,
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

#: Effects that never block: lease bookkeeping and a look at the backend's state.
LOCAL: tuple[type, ...] = (Holds, Watch, Unwatch)
#: Effects that settle a message with the broker.
SETTLING: tuple[type, ...] = (Ack, Nack, Release, DeadLetter)
#: Effects on the deduplication cache.
CACHE: tuple[type, ...] = (Claim, FinishClaim, ProbeCache)


class BlockingPerformer:
    """Performs the engine's effects with blocking calls (see :mod:`melange.dispatch.effects`)."""

    def __init__(
        self,
        backend: MessagingBackend,
        cache: DeduplicationCache | None,
        leases: Heartbeat | None,
        stop: threading.Event,
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
        self._cache.get("melange-cache-probe")

    def _watch(self, effect: Watch) -> None:
        leases = self._leases
        if leases is None:
            return
        if effect.messages:
            leases.add_batch(effect.messages)
        if effect.key is not None:
            assert self._cache is not None
            leases.add_claim(effect.key, effect.lease, self._cache.renew)

    def _unwatch(self, effect: Unwatch) -> None:
        leases = self._leases
        if leases is None:
            return
        if effect.messages:
            leases.remove_batch(effect.messages)
        if effect.key is not None:
            leases.remove_claim(effect.key)


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


__all__ = ["CACHE", "LOCAL", "SETTLING", "BlockingPerformer", "invoke"]
