"""What the threaded and the asyncio dispatcher share: configuration, consumers, stopping."""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from melange.backends.async_interfaces import AsyncMessagingBackend, overrides_holds
from melange.backends.backend_manager import BackendManager
from melange.backends.duck_typed import as_backend
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.deduplication.async_cache import AsyncDeduplicationCache
from melange.deduplication.cache import DeduplicationCache
from melange.dispatch.decisions import DEFAULT_DEDUP_LEASE_SECONDS, Route
from melange.dispatch.engine import Engine
from melange.dispatch.leases import Heartbeat
from melange.dispatch.middleware import Middleware, MiddlewareChain
from melange.dispatch.policy import DEFAULT_POLICY, FailurePolicy
from melange.dispatch.stats import DispatcherStats
from melange.serializers.registry import SerializerRegistry, SerializerSource

if TYPE_CHECKING:
    from melange.claimcheck import ClaimCheck

logger = logging.getLogger("melange.dispatcher")

#: What a dispatcher calls on a backend that is not a MessagingBackend (7.2.0 duck typing).
_CONSUMING = ("get_queue", "retrieve_messages", "acknowledge")


class DispatcherBase:
    """Consumes a queue and dispatches each message to the consumers that accept it.

    Args:
        serializer_registry: The serializers messages may be decoded with: one serializer,
            a list, a :class:`~melange.serializers.registry.SerializerRegistry` or its config
            dict. A message naming any other serializer id is dead-lettered, never guessed.
        cache: Deduplication cache; ``None`` processes every delivery. The asyncio
            dispatcher also takes an
            :class:`~melange.deduplication.async_cache.AsyncDeduplicationCache`.
        backend: The backend; defaults to the ``BackendManager``'s. The asyncio dispatcher
            also takes an :class:`~melange.backends.async_interfaces.AsyncMessagingBackend`.
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
        claim_check: A :class:`~melange.claimcheck.ClaimCheck` on the publishers' payload
            store: the payload of a message carrying its reference is fetched before
            decoding (retried, then dead-lettered, when it cannot be), and removed once the
            message is acknowledged where its reference allows. Without it such a message
            is dead-lettered as undecodable, with a reason saying so.
    """

    #: Whether this driver takes asynchronous backends and caches (the asyncio one does).
    _takes_async: ClassVar[bool] = False
    #: The blocking backend and cache, for a driver that performs with blocking calls (the
    #: threaded one, which refuses asynchronous ones); see ``_given_backend``/``_given_cache``.
    _backend: MessagingBackend
    _cache: DeduplicationCache | None

    def __init__(
        self,
        serializer_registry: SerializerSource | None = None,
        cache: DeduplicationCache | AsyncDeduplicationCache | None = None,
        backend: MessagingBackend | AsyncMessagingBackend | None = None,
        always_ack: bool = False,
        *,
        consumers: Iterable[Consumer] = (),
        failure_policy: FailurePolicy | None = None,
        dedup_lease_seconds: float = DEFAULT_DEDUP_LEASE_SECONDS,
        dedup_fail_open: bool = False,
        visibility_heartbeat: bool = True,
        middleware: Sequence[Middleware] = (),
        claim_check: ClaimCheck | None = None,
    ) -> None:
        if serializer_registry is None:
            raise TypeError(
                "a dispatcher needs the serializer(s) its messages may be decoded with, e.g. "
                f"{type(self).__name__}(JsonSerializer(), backend=backend)"
            )
        if dedup_lease_seconds <= 0:
            raise ValueError(f"dedup_lease_seconds must be positive, got {dedup_lease_seconds}")
        self._check_kinds(backend, cache)
        given = backend if backend is not None else BackendManager().get_backend()
        if not isinstance(given, MessagingBackend | AsyncMessagingBackend):
            # A 7.2.0-style duck-typed backend (or a test double of one).
            given = as_backend(given, _CONSUMING, type(self).__name__)
        #: What the user passed, blocking or not.
        self._given_backend: MessagingBackend | AsyncMessagingBackend = given
        self._given_cache = cache
        if isinstance(given, MessagingBackend):
            self._backend = given
        self._cache = cache if isinstance(cache, DeduplicationCache) else None
        self._adapt()
        self._route = Route(consumers)
        self._stop = threading.Event()
        self._on_exception: Callable[[Exception], Any] | None = None
        # Set when a consumer raised SystemExit/KeyboardInterrupt on a worker: the loop
        # stops and raises it in the thread that runs it.
        self._interrupted: BaseException | None = None
        watch_messages = visibility_heartbeat and given.capabilities.extend_visibility
        # Renews message leases and deduplication claims while handlers run.
        self._leases: Heartbeat | None = None
        if watch_messages or cache is not None:
            self._leases = self._heartbeat()
        #: Counters of what this dispatcher did.
        self.stats = DispatcherStats()
        self._claim_check = claim_check
        if claim_check is not None:
            middleware = (*middleware, claim_check.middleware)
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
            check_holds=overrides_holds(given),
            middleware=MiddlewareChain(middleware),
            notify=self._notify,
            stopping=self._stop.is_set,
            rng=random.Random(),
            claim_check=claim_check is not None,
        )
        self._setup_driver()

    def _check_kinds(self, backend: object, cache: object) -> None:
        name = type(self).__name__
        if backend is not None:
            if isinstance(backend, AsyncMessagingBackend) and not self._takes_async:
                raise TypeError(
                    f"{type(backend).__name__} is an asynchronous backend, which {name} cannot "
                    "use: consume from it with melange.aio.AsyncMessageDispatcher"
                )
            if not isinstance(backend, MessagingBackend | AsyncMessagingBackend):
                as_backend(backend, _CONSUMING, name)  # raises, naming what is missing
        if cache is not None:
            if isinstance(cache, AsyncDeduplicationCache) and not self._takes_async:
                raise TypeError(
                    f"{type(cache).__name__} is an asynchronous cache, which {name} cannot "
                    "use: give it to melange.aio.AsyncMessageDispatcher, or use its blocking "
                    "twin (e.g. RedisCache for AsyncRedisCache)"
                )
            if not isinstance(cache, DeduplicationCache | AsyncDeduplicationCache):
                raise TypeError(f"cache must be a DeduplicationCache, got {type(cache).__name__}")

    def _adapt(self) -> None:
        """Prepare the backend and the cache for this driver (before anything uses them)."""

    def _heartbeat(self) -> Heartbeat:
        """The lease renewal of this driver (the blocking backend's, by default)."""
        return Heartbeat.for_backend(self._backend)

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

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the consume loop to return after settling the messages in hand. Thread-safe."""
        self._stop.set()
        self._given_backend.interrupt()

    @property
    def backend(self) -> MessagingBackend | AsyncMessagingBackend:
        """The backend messages are consumed from, as it was given."""
        return self._given_backend

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal received) since the loop started."""
        return self._stop.is_set()

    def add_middleware(self, *middleware: Middleware) -> None:
        """Run ``middleware`` too, after the ones given so far (before consuming starts)."""
        self._engine.middleware = self._engine.middleware.extended(middleware)

    @property
    def last_turn(self) -> float:
        """``time.monotonic()`` when the consume loop last turned: asked for a batch or
        settled a message (what a liveness probe watches)."""
        return self._engine.last_turn

    @property
    def receive_failing(self) -> bool:
        """Whether the last receive from the broker failed."""
        return self._engine.receive_failing

    @property
    def cache_unreachable(self) -> bool:
        """Whether the deduplication cache is unreachable and consuming waits for it."""
        return self._engine.cache_down

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
        wait = self._given_backend.loop_wait_seconds
        if wait is not None:
            options.setdefault("wait_seconds", wait)

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

    def _settling_failed(
        self, queue_name: str, exc: BaseException, message_id: str | None = None
    ) -> None:
        """Handling a batch received from ``queue_name``, or one message of it on a worker
        (``message_id``), raised ``exc``. A consumer's ``SystemExit``/``KeyboardInterrupt``
        stops the loop (see :meth:`_interrupt_from_worker`); anything else is a broker error
        while settling (a failed acknowledgement, say): the unsettled messages come back by
        themselves, so the loop keeps consuming."""
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            self._interrupt_from_worker(exc)
            return
        if message_id is None:
            what, extra = f"messages from {queue_name}", {"queue": queue_name}
        else:
            what, extra = f"message {message_id}", {"queue": queue_name, "message_id": message_id}
        logger.error("settling %s failed: %s", what, exc, exc_info=exc, extra=extra)
        self._notify(exc)

    def _notify(self, exc: BaseException) -> None:
        hook = self._on_exception
        if hook is not None and isinstance(exc, Exception):
            try:
                hook(exc)
            except Exception:
                logger.exception("on_exception hook failed")


__all__ = ["DispatcherBase"]
