""":class:`AsyncKombuBackend`: the kombu backend under the asynchronous contract.

kombu has no asyncio API, so this backend is the blocking adapter
(:class:`~melange.backends.async_interfaces.BlockingBackendAdapter`) around a
:class:`~melange.backends.kombu.KombuBackend`, whose calls run on a pool of threads of its own,
bounded by ``max_threads``, rather than on asyncio's shared default pool: the same messages,
wire format, queues and guarantees, whichever API a service uses. A receive that waits for
messages holds one of those threads for its wait; :meth:`AsyncKombuBackend.interrupt` ends it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from melange.backends.async_interfaces import BlockingBackendAdapter
from melange.backends.kombu.backend import DEFAULT_URL, KombuBackend

_T = TypeVar("_T")


class AsyncKombuBackend(BlockingBackendAdapter):
    """Queues and topics on a kombu transport, for asyncio services.

    Args:
        url: See :class:`~melange.backends.kombu.KombuBackend`.
        max_threads: Threads that run the blocking kombu calls (at least 2, so that a
            waiting receive never keeps settlements waiting).
        backend: A :class:`KombuBackend` to run instead of one made from ``url`` and
            ``options``; it is closed with this one.
        **options: Options of :class:`~melange.backends.kombu.KombuBackend`.
    """

    name = "kombu"
    backend: KombuBackend

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        max_threads: int = 4,
        backend: KombuBackend | None = None,
        **options: Any,
    ) -> None:
        if max_threads < 2:
            raise ValueError(f"max_threads must be at least 2, got {max_threads!r}")
        super().__init__(backend if backend is not None else KombuBackend(url, **options))
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="melange-kombu")

    def __repr__(self) -> str:
        return f"AsyncKombuBackend({self.backend.url!r})"

    async def run_blocking(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run a kombu call on this backend's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def purge(self, queue_name: str) -> int | None:
        """Delete the ready messages of the queue; returns how many."""
        return await self.run_blocking(self.backend.purge, queue_name)

    async def aclose(self) -> None:
        """Close the blocking backend and stop the threads."""
        # A receive waiting on one of the threads would otherwise delay the close.
        self.backend.interrupt()
        await super().aclose()
        self._executor.shutdown(wait=False)


__all__ = ["AsyncKombuBackend"]
