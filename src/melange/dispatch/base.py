"""What the threaded and the asyncio dispatcher share: configuration, consumers, stopping."""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from melange.backends.backend_manager import BackendManager
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.deduplication.cache import DeduplicationCache
from melange.dispatch.decisions import DEFAULT_DEDUP_LEASE_SECONDS, Route
from melange.dispatch.engine import Engine
from melange.dispatch.leases import Heartbeat
from melange.dispatch.middleware import Middleware, MiddlewareChain
from melange.dispatch.policy import DEFAULT_POLICY, FailurePolicy
from melange.dispatch.stats import DispatcherStats
from melange.serializers.registry import SerializerRegistry, SerializerSource

logger = logging.getLogger("melange.dispatcher")


class DispatcherBase:
    """Consumes a queue and dispatches each message to the consumers that accept it.

    Args:
        serializer_registry: The serializers messages may be decoded with: one serializer,
            a list, a :class:`~melange.serializers.registry.SerializerRegistry` or its config
            dict. A message naming any other serializer id is dead-lettered, never guessed.
        cache: Deduplication cache; ``None`` processes every delivery.
        backend: The backend; defaults to the ``BackendManager``'s.
        always_ack: Acknowledge every message even if a consumer failed (failures are
            logged and lost: use only for messages that may be dropped).
        consumers: Consumers to attach right away.
        failure_policy: Retries, backoff and dead-lettering (default: 4 attempts, exponential
            backoff from 1 second). A consumer's own ``failure_policy`` overrides it.
        dedup_lease_seconds: How long a deduplication claim protects a message being
            processed before another process may take it over. The claim is renewed every
            third of it while the handler runs, so it only needs to outlast a crash: a
            message whose claimant died is processed again this many seconds later.
        dedup_fail_open: When the cache cannot be reached, process without deduplication
            (``True``) instead of leaving the message for later (``False``, the default).
        visibility_heartbeat: Keep messages in hand invisible while handlers run, on backends
            that can extend a lease (default on there).
        middleware: :class:`~melange.dispatch.middleware.Middleware` run around every
            message, in order.
    """

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        cache: DeduplicationCache | None = None,
        backend: MessagingBackend | None = None,
        always_ack: bool = False,
        *,
        consumers: Iterable[Consumer] = (),
        failure_policy: FailurePolicy | None = None,
        dedup_lease_seconds: float = DEFAULT_DEDUP_LEASE_SECONDS,
        dedup_fail_open: bool = False,
        visibility_heartbeat: bool = True,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if serializer_registry is None:
            raise TypeError(
                "a dispatcher needs the serializer(s) its messages may be decoded with, e.g. "
                f"{type(self).__name__}(JsonSerializer(), backend=backend)"
            )
        if dedup_lease_seconds <= 0:
            raise ValueError(f"dedup_lease_seconds must be positive, got {dedup_lease_seconds}")
        if cache is not None and not isinstance(cache, DeduplicationCache):
            raise TypeError(f"cache must be a DeduplicationCache, got {type(cache).__name__}")
        if backend is not None and not isinstance(backend, MessagingBackend):
            raise TypeError(f"backend must be a MessagingBackend, got {type(backend).__name__}")
        self._cache = cache
        self._backend = backend or BackendManager().get_backend()
        self._route = Route(consumers)
        self._stop = threading.Event()
        self._on_exception: Callable[[Exception], Any] | None = None
        # Set when a consumer raised SystemExit/KeyboardInterrupt on a worker: the loop
        # stops and raises it in the thread that runs it.
        self._interrupted: BaseException | None = None
        watch_messages = visibility_heartbeat and self._backend.capabilities.extend_visibility
        # Renews message leases and deduplication claims while handlers run.
        self._leases: Heartbeat | None = None
        if watch_messages or cache is not None:
            self._leases = Heartbeat(self._backend)
        #: Counters of what this dispatcher did.
        self.stats = DispatcherStats()
        self._engine = Engine(
            SerializerRegistry.coerce(serializer_registry),
            self._route,
            failure_policy or DEFAULT_POLICY,
            self.stats,
            deduplicate=cache is not None,
            lease=dedup_lease_seconds,
            fail_open=dedup_fail_open,
            always_ack=always_ack,
            watch_messages=watch_messages,
            # Only backends that override holds() can orphan a message.
            check_holds=type(self._backend).holds is not MessagingBackend.holds,
            middleware=MiddlewareChain(middleware),
            notify=self._notify,
            stopping=self._stop.is_set,
            rng=random.Random(),
        )
        self._setup_driver()

    def _setup_driver(self) -> None:
        """Prepare what the driver needs to perform the engine's effects."""

    # -- consumers --------------------------------------------------------------------------

    def attach_consumer(self, consumer: Consumer) -> None:
        """Dispatch messages to ``consumer`` too."""
        self._route.add(consumer)

    def unattach_consumer(self, consumer: Consumer) -> None:
        """Stop dispatching to ``consumer``."""
        self._route.remove(consumer)

    @property
    def consumers(self) -> list[Consumer]:
        """The attached consumers."""
        return self._route.consumers

    @property
    def backend(self) -> MessagingBackend:
        """The backend messages are consumed from."""
        return self._backend

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the consume loop to return after settling the messages in hand. Thread-safe."""
        self._stop.set()
        self._backend.interrupt()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal received) since the loop started."""
        return self._stop.is_set()

    def close(self) -> None:
        """Stop the lease renewal thread (the backend stays open)."""
        if self._leases is not None:
            self._leases.close()

    # -- shared by the drivers --------------------------------------------------------------

    def _start_loop(
        self, queue_name: str, on_exception: Callable[[Exception], Any] | None, options: Any
    ) -> None:
        self._stop.clear()
        self._interrupted = None
        self._on_exception = on_exception
        if self._backend.loop_wait_seconds is not None:
            options.setdefault("wait_seconds", self._backend.loop_wait_seconds)

    def _signal_received(self, signum: int) -> None:
        """SIGINT/SIGTERM: the first finishes the messages in hand, a second stops now."""
        if self._stop.is_set():
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        logger.info("signal %s received: finishing the messages in hand", int(signum))
        self.stop()

    def _interrupt_from_worker(self, exc: BaseException) -> None:
        """A consumer on a worker raised SystemExit/KeyboardInterrupt: stop the loop, which
        raises it once the other messages in hand are settled."""
        if self._interrupted is None:
            self._interrupted = exc
        self.stop()

    def _notify(self, exc: BaseException) -> None:
        hook = self._on_exception
        if hook is not None and isinstance(exc, Exception):
            try:
                hook(exc)
            except Exception:
                logger.exception("on_exception hook failed")


__all__ = ["DispatcherBase"]
