"""Message dispatchers: poll a queue, decode, route to consumers, settle.

A :class:`MessageDispatcher` receives messages from a queue, decodes each with the serializer
its id names, hands it to every attached consumer that accepts it, and settles it: it is
acknowledged only when every accepting consumer succeeded; otherwise it is retried according to
the :class:`~melange.policy.FailurePolicy` and finally dead-lettered with the reason. A message
that cannot be decoded is dead-lettered at once. No failure stops the consume loop.

With a :class:`~melange.infrastructure.cache.DeduplicationCache`, a consumer that already
processed a message skips it on redelivery (which counts as success).
"""

from __future__ import annotations

import inspect
import logging
import random
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from melange.backends.backend_manager import BackendManager
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.context import processing
from melange.dispatch_core import (
    ABANDON,
    ACK,
    DEFAULT_DEDUP_LEASE_SECONDS,
    Action,
    ConsumerResult,
    Decoded,
    Outcome,
    Route,
    Verdict,
    decode,
    poison_verdict,
    settle,
)
from melange.heartbeat import Heartbeat
from melange.infrastructure.cache import ClaimState, DeduplicationCache
from melange.models import Message, QueueWrapper
from melange.policy import DEFAULT_POLICY, FailurePolicy
from melange.serializers.registry import SerializerRegistry, SerializerSource

logger = logging.getLogger("melange.dispatcher")


@dataclass
class DispatcherStats:
    """Counters a dispatcher keeps; read them any time (e.g. to export as metrics).

    Every received message is settled exactly one way, so once none is in hand
    ``received == acknowledged + retried + dead_lettered + released``. ``released`` counts
    messages given back without running a handler (on stop, while another process holds the
    deduplication claim or the cache is down, or after their connection was lost);
    ``retried`` includes messages that should have been dead-lettered but whose queue has
    none. ``poison`` (a subset of ``dead_lettered``),
    ``duplicates_skipped`` (of ``acknowledged``) and ``consumer_failures`` (per consumer
    call) are details.
    """

    received: int = 0
    acknowledged: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    poison: int = 0
    duplicates_skipped: int = 0
    consumer_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._lock:
            return {
                k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, int)
            }


class MessageDispatcher:
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
        failure_policy: Retries, backoff and dead-lettering (default: 5 attempts, exponential
            backoff from 1 second). A consumer's own ``failure_policy`` overrides it.
        dedup_lease_seconds: How long a deduplication claim protects a message being
            processed before another process may take it over. The claim is renewed every
            third of it while the handler runs, so it only needs to outlast a crash: a
            message whose claimant died is processed again this many seconds later.
        dedup_fail_open: When the cache cannot be reached, process without deduplication
            (``True``) instead of leaving the message for later (``False``, the default).
        visibility_heartbeat: Keep messages in hand invisible while handlers run, on backends
            that can extend a lease (default on there).
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
    ) -> None:
        if serializer_registry is None:
            raise TypeError(
                "a dispatcher needs the serializer(s) its messages may be decoded with, e.g. "
                "MessageDispatcher(JsonSerializer(), backend=backend)"
            )
        self._registry = SerializerRegistry.coerce(serializer_registry)
        if dedup_lease_seconds <= 0:
            raise ValueError(f"dedup_lease_seconds must be positive, got {dedup_lease_seconds}")
        if cache is not None and not isinstance(cache, DeduplicationCache):
            raise TypeError(f"cache must be a DeduplicationCache, got {type(cache).__name__}")
        if backend is not None and not isinstance(backend, MessagingBackend):
            raise TypeError(f"backend must be a MessagingBackend, got {type(backend).__name__}")
        self._cache = cache
        self._backend = backend or BackendManager().get_backend()
        self._always_ack = always_ack
        self._policy = failure_policy or DEFAULT_POLICY
        self._lease = dedup_lease_seconds
        self._fail_open = dedup_fail_open
        self._route = Route(consumers)
        self._stop = threading.Event()
        # Set while the deduplication cache is unreachable and the dispatcher fails closed.
        self._cache_down = threading.Event()
        self._rng = random.Random()
        self._on_exception: Callable[[Exception], Any] | None = None
        self._heartbeat: Heartbeat | None = None
        # Renews deduplication claims while handlers run (and, with _heartbeat, leases).
        self._leases: Heartbeat | None = None
        if visibility_heartbeat and self._backend.capabilities.extend_visibility:
            self._heartbeat = self._leases = Heartbeat(self._backend)
        elif cache is not None:
            self._leases = Heartbeat(self._backend)
        #: Counters of what this dispatcher did.
        self.stats = DispatcherStats()

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

    # -- consuming --------------------------------------------------------------------------

    def consume_event(self, queue_name: str, **kwargs: Any) -> int:
        """Receive one batch from ``queue_name`` and dispatch it; returns its size.

        Keyword arguments go to the backend's ``retrieve_messages`` (``max_messages``,
        ``wait_seconds``). Backend errors propagate.
        """
        queue = self._backend.get_queue(queue_name)
        messages = self._backend.retrieve_messages(queue, **kwargs)
        self._dispatch_batch(messages, queue)
        return len(messages)

    def consume_loop(
        self,
        queue_name: str,
        on_exception: Callable[[Exception], Any] | None = None,
        after_consume: Callable[[], Any] | None = None,
        *,
        workers: int = 1,
        install_signal_handlers: bool = True,
        **kwargs: Any,
    ) -> None:
        """Consume ``queue_name`` until :meth:`stop` is called or the process gets SIGINT/SIGTERM.

        On stop it finishes and settles the messages in hand, gives back the ones it received
        but had not started, and returns. A second signal stops at once. Broker errors are
        logged, passed to ``on_exception`` and retried with backoff; they never end the loop.

        Args:
            on_exception: Called with every exception: consumer failures and backend errors.
            after_consume: Called after each received batch.
            workers: Messages processed at once, on threads. Messages of one FIFO group stay
                in order.
            install_signal_handlers: Handle SIGINT/SIGTERM (only possible in the main thread).
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._stop.clear()
        self._on_exception = on_exception
        queue = self._backend.get_queue(queue_name)
        if self._backend.loop_wait_seconds is not None:
            kwargs.setdefault("wait_seconds", self._backend.loop_wait_seconds)
        logger.info("consuming %s", queue_name, extra={"queue": queue_name, "workers": workers})
        with self._signals(install_signal_handlers):
            if workers == 1:
                self._loop_serial(queue, after_consume, kwargs)
            else:
                self._loop_pool(queue, after_consume, workers, kwargs)
        logger.info("stopped consuming %s", queue_name, extra={"queue": queue_name})

    def stop(self) -> None:
        """Ask the consume loop to return after settling the messages in hand. Thread-safe."""
        self._stop.set()
        self._backend.interrupt()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal received) since the loop started."""
        return self._stop.is_set()

    def _receive(
        self, queue: QueueWrapper, kwargs: dict[str, Any], failures: int
    ) -> tuple[list[Message], int]:
        try:
            return self._backend.retrieve_messages(queue, **kwargs), 0
        except Exception as exc:
            failures += 1
            pause = min(30.0, 0.5 * 2 ** min(failures, 6))
            logger.error(
                "receiving from %s failed (%s); retrying in %.1fs",
                queue.name,
                exc,
                pause,
                exc_info=True,
                extra={"queue": queue.name},
            )
            self._notify(exc)
            self._stop.wait(pause)
            return [], failures

    def _loop_serial(
        self, queue: QueueWrapper, after_consume: Callable[[], Any] | None, kwargs: dict[str, Any]
    ) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wait_for_cache()
            if self._stop.is_set():
                break  # a receive now would only count a delivery against each message
            messages, failures = self._receive(queue, kwargs, failures)
            if messages:
                try:
                    self._dispatch_batch(messages, queue)
                except Exception as exc:
                    # A broker error while settling (a failed batched delete, say): the
                    # unsettled messages come back by themselves, so keep consuming.
                    logger.error(
                        "settling messages from %s failed: %s",
                        queue.name,
                        exc,
                        exc_info=True,
                        extra={"queue": queue.name},
                    )
                    self._notify(exc)
            if after_consume is not None:
                after_consume()

    def _loop_pool(
        self,
        queue: QueueWrapper,
        after_consume: Callable[[], Any] | None,
        workers: int,
        kwargs: dict[str, Any],
    ) -> None:
        slots = threading.Semaphore(workers)
        tails: dict[str, Future[bool]] = {}
        failures = 0
        with ThreadPoolExecutor(workers, thread_name_prefix="melange-worker") as pool:
            while not self._stop.is_set():
                # Receive only when a worker is free, so in-flight work stays bounded.
                if not slots.acquire(timeout=0.5):
                    continue
                slots.release()
                self._wait_for_cache()
                if self._stop.is_set():
                    break  # stopped while waiting for a worker: receive nothing more
                kwargs["max_messages"] = min(10, workers)
                messages, failures = self._receive(queue, kwargs, failures)
                in_batch: dict[str, Future[bool]] = {}
                for message in messages:
                    slots.acquire()
                    group = message.group_id
                    before = None
                    if group is not None:
                        # Within a batch, chain on the previous message of the group even if it
                        # is done already (and forgotten in ``tails``): if it is coming back,
                        # this one must come back too.
                        before = in_batch.get(group) or tails.get(group)
                    future = pool.submit(self._work, message, queue, before, slots)
                    if group is not None:
                        in_batch[group] = future
                        tails[group] = future
                        future.add_done_callback(_forget_tail(tails, group))
                if after_consume is not None:
                    after_consume()

    def _work(
        self,
        message: Message,
        queue: QueueWrapper,
        before: Future[bool] | None,
        slots: threading.Semaphore,
    ) -> bool:
        """Process one message; returns whether it is settled for good (acknowledged or
        dead-lettered), i.e. whether the next message of its FIFO group may go ahead."""
        try:
            # Keep FIFO groups in order: wait for the previous message of the group, and give
            # this one back if that one is coming back.
            go_ahead = before is None or before.result()
            self.stats.add("received")
            if self._stop.is_set() or not go_ahead:
                self._release([message])
                return False
            return self._apply(self._handle(message, queue.name), message, queue.name)
        except Exception as exc:
            logger.exception("settling message %s failed", message.message_id)
            self._notify(exc)
            return False
        finally:
            slots.release()

    def _dispatch_batch(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        self.stats.add("received", len(messages))
        acks: list[Message] = []
        # FIFO groups with a message coming back: their later messages must come back too.
        held: set[str] = set()
        heartbeat = self._heartbeat
        if heartbeat is not None:
            # Every message of the batch is in hand until settled, not only the one running.
            heartbeat.add_batch(messages)
        try:
            for index, message in enumerate(messages):
                if self._stop.is_set():
                    self._release(messages[index:])
                    break
                if message.group_id is not None and message.group_id in held:
                    self._release([message])
                    continue
                verdict = self._handle(message, queue.name, renew=False)
                if verdict.action is Action.ACK:
                    acks.append(message)
                    continue
                if heartbeat is not None:
                    heartbeat.remove(message)
                if not self._apply(verdict, message, queue.name) and message.group_id:
                    held.add(message.group_id)
        finally:
            if heartbeat is not None:
                heartbeat.remove_batch(messages)
            if acks:
                # One round trip for the whole batch where the backend supports it.
                self._backend.acknowledge_batch(acks)
                self.stats.add("acknowledged", len(acks))

    def _wait_for_cache(self) -> None:
        """Hold off receiving while the deduplication cache is unreachable (failing closed).

        Receiving anyway would only give the same messages back, and every delivery counts
        towards the broker's redrive limit: they would reach the dead-letter queue because of
        an outage that is not theirs. The cache is probed with growing pauses until it answers.
        """
        failures = 0
        while self._cache_down.is_set() and not self._stop.is_set():
            self._stop.wait(min(5.0, 0.1 * 2**failures))
            try:
                assert self._cache is not None
                self._cache.get("melange-cache-probe")
            except Exception:
                failures = min(failures + 1, 6)
                continue
            logger.info("deduplication cache reachable again: resuming")
            self._cache_down.clear()

    def _release(self, messages: Sequence[Message]) -> None:
        if self._heartbeat is not None:
            # A renewal after the release would hide the message again.
            self._heartbeat.remove_batch(messages)
        for message in messages:
            self.stats.add("released")
            try:
                self._backend.release(message)
            except Exception:
                logger.warning("could not release message %s", message.message_id, exc_info=True)

    # -- one message ------------------------------------------------------------------------

    def _handle(self, message: Message, queue_name: str, renew: bool = True) -> Verdict:
        """Decode, route and run consumers; return how to settle (acks are left to the caller).

        ``renew`` registers the message with the heartbeat while consumers run (callers that
        registered a whole batch pass ``False``).
        """
        if not self._backend.holds(message):
            return ABANDON
        decoded = decode(message, self._registry)
        if not isinstance(decoded, Decoded):
            self.stats.add("poison")
            logger.error(
                "message %s on %s cannot be decoded: %s",
                message.message_id,
                queue_name,
                decoded.reason,
                extra=_log_extra(message, queue_name, "", "poison"),
            )
            return poison_verdict(decoded)
        consumers = self._route.select(decoded.payload, message.manifest)
        if not consumers:
            return ACK
        heartbeat = self._heartbeat if renew else None
        if heartbeat is not None:
            heartbeat.add(message)
        try:
            with processing(message):
                results = [self._run(c, decoded.payload, message, queue_name) for c in consumers]
        finally:
            if heartbeat is not None:
                heartbeat.remove(message)
        if len(results) == 1 and results[0].outcome is Outcome.SUCCEEDED:
            return ACK  # one consumer, and it succeeded: nothing to weigh
        return settle(
            results,
            message.attempt,
            self._policy,
            always_ack=self._always_ack,
            rng=self._rng,
            busy_delay=self._lease,
        )

    def _run(
        self, consumer: Consumer, payload: Any, message: Message, queue_name: str
    ) -> ConsumerResult:
        key = None
        if self._cache is not None:
            early, key = self._claim(consumer, message, queue_name)
            if early is not None:
                return early
        policy = consumer.failure_policy or self._policy
        error: Exception | None = None
        for _ in range(policy.immediate_retries + 1):
            try:
                result = consumer.process(payload)
                if result is not None and inspect.isawaitable(result):
                    _close_awaitable(result)
                    raise TypeError(
                        f"consumer {consumer.name} is asynchronous; run it with "
                        "melange.aio.AsyncMessageDispatcher"
                    )
            except Exception as exc:
                error = exc
                continue
            error = None
            break
        if error is None and key is None:
            return ConsumerResult(consumer, Outcome.SUCCEEDED)  # the common case, kept cheap
        return self._finish(consumer, message, queue_name, key, error)

    def _claim(
        self, consumer: Consumer, message: Message, queue_name: str
    ) -> tuple[ConsumerResult | None, str | None]:
        """Take the deduplication claim for ``consumer`` (blocking I/O on the cache).

        Returns a final result when the consumer must not run now, else ``None`` and the
        claimed key (``None`` when no deduplication applies).
        """
        if self._cache is None:
            return None, None
        key = f"{consumer.name}.{message.message_id}"
        try:
            state = self._cache.claim(key, self._lease)
        except Exception as exc:
            logger.error(
                "deduplication cache unreachable for message %s (%s): %s",
                message.message_id,
                exc,
                "processing without deduplication" if self._fail_open else "leaving it for later",
                extra=_log_extra(message, queue_name, consumer.name, "cache_error"),
            )
            self._notify(exc)
            if not self._fail_open:
                self._cache_down.set()
                return ConsumerResult(consumer, Outcome.NOT_ATTEMPTED), None
            return None, None
        if state is ClaimState.DONE:
            self.stats.add("duplicates_skipped")
            logger.info(
                "skipping message %s already processed by %s",
                message.message_id,
                consumer.name,
                extra=_log_extra(message, queue_name, consumer.name, "duplicate"),
            )
            return ConsumerResult(consumer, Outcome.SKIPPED_DUPLICATE), None
        if state is ClaimState.BUSY:
            return ConsumerResult(consumer, Outcome.BUSY), None
        if self._leases is not None:
            self._leases.add_claim(key, self._lease, self._cache.renew)
        return None, key

    def _finish(
        self,
        consumer: Consumer,
        message: Message,
        queue_name: str,
        key: str | None,
        error: Exception | None,
    ) -> ConsumerResult:
        """Record a consumer's outcome: logs, counters, and the deduplication claim."""
        if key is not None and self._leases is not None:
            self._leases.remove_claim(key)
        if error is not None:
            self.stats.add("consumer_failures")
            logger.error(
                "consumer %s failed on message %s (attempt %s): %r",
                consumer.name,
                message.message_id,
                message.attempt,
                error,
                exc_info=error,
                extra=_log_extra(message, queue_name, consumer.name, "failed"),
            )
            self._notify(error)
            if key is not None:
                self._cache_call("release", key)
            return ConsumerResult(consumer, Outcome.FAILED, error)
        if key is not None:
            self._cache_call("mark_done", key)
        return ConsumerResult(consumer, Outcome.SUCCEEDED)

    def _cache_call(self, method: str, key: str) -> None:
        assert self._cache is not None
        try:
            getattr(self._cache, method)(key)
        except Exception as exc:
            logger.error("deduplication cache %s(%r) failed: %s", method, key, exc)
            self._notify(exc)

    def _apply(self, verdict: Verdict, message: Message, queue_name: str) -> bool:
        """Settle ``message``; returns whether it is settled for good (not coming back)."""
        if verdict.action is Action.ACK:
            self._backend.acknowledge(message)
            self.stats.add("acknowledged")
            return True
        if verdict.action is Action.RELEASE:
            self.stats.add("released")
            logger.info(
                "message %s given back for %.2fs: %s",
                message.message_id,
                verdict.delay,
                verdict.reason,
                extra=_log_extra(message, queue_name, verdict.consumer, "released"),
            )
            self._backend.release(message, verdict.delay)
            return False
        if verdict.action is Action.ABANDON:
            # Its connection is gone: the broker delivers it again, to us or to another.
            self.stats.add("released")
            return False
        if verdict.action is Action.RETRY:
            self.stats.add("retried")
            logger.warning(
                "message %s will be retried in %.2fs: %s",
                message.message_id,
                verdict.delay,
                verdict.reason,
                extra=_log_extra(message, queue_name, verdict.consumer, "retry"),
            )
            self._backend.nack(message, verdict.delay)
            return False
        headers = verdict.failure_headers(message, queue_name)
        if self._backend.dead_letter(message, headers):
            self.stats.add("dead_lettered")
            logger.error(
                "message %s dead-lettered: %s",
                message.message_id,
                verdict.reason,
                extra=_log_extra(message, queue_name, verdict.consumer, "dead_lettered"),
            )
            return True
        delay = self._policy.delay_for(message.attempt, self._rng)
        logger.error(
            "message %s should be dead-lettered (%s) but queue %s has no dead-letter queue; "
            "it is left for the broker's redrive and retried in %.1fs",
            message.message_id,
            verdict.reason,
            queue_name,
            delay,
            extra=_log_extra(message, queue_name, verdict.consumer, "no_dead_letter_queue"),
        )
        self.stats.add("retried")
        self._backend.nack(message, delay)
        return False

    def _notify(self, exc: Exception) -> None:
        hook = self._on_exception
        if hook is not None:
            try:
                hook(exc)
            except Exception:
                logger.exception("on_exception hook failed")

    # -- signals ----------------------------------------------------------------------------

    @contextmanager
    def _signals(self, install: bool) -> Iterator[None]:
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[signal.Signals, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                # Second signal: stop now.
                raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
            logger.info("signal %s received: finishing the messages in hand", signum)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def close(self) -> None:
        """Stop the heartbeat thread (the backend stays open)."""
        if self._leases is not None:
            self._leases.close()


def _close_awaitable(result: Any) -> None:
    # Avoid "coroutine was never awaited" warnings for async consumers run synchronously.
    close = getattr(result, "close", None)
    if callable(close):
        close()


def _forget_tail(tails: dict[str, Future[bool]], group: str) -> Callable[[Future[bool]], None]:
    def forget(future: Future[bool]) -> None:
        if tails.get(group) is future:
            tails.pop(group, None)

    return forget


def _log_extra(message: Message, queue: str, consumer: str, outcome: str) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "queue": queue,
        "consumer": consumer,
        "attempt": message.attempt,
        "outcome": outcome,
    }


class SimpleMessageDispatcher(MessageDispatcher):
    """A dispatcher for a single consumer.

    Args:
        wrapped_consumer: The consumer.
        serializer_registry: As for :class:`MessageDispatcher`.
        cache: As for :class:`MessageDispatcher`.
        always_ack: As for :class:`MessageDispatcher`.
        backend: As for :class:`MessageDispatcher`.
        **kwargs: Further options of :class:`MessageDispatcher`.
    """

    def __init__(
        self,
        wrapped_consumer: Consumer,
        serializer_registry: SerializerSource | None = None,
        cache: DeduplicationCache | None = None,
        always_ack: bool = False,
        backend: MessagingBackend | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(wrapped_consumer, Consumer):
            raise TypeError(
                "SimpleMessageDispatcher takes the consumer first, then the serializer(s): "
                f"got {type(wrapped_consumer).__name__} as the consumer"
            )
        super().__init__(
            serializer_registry,
            cache=cache,
            backend=backend,
            always_ack=always_ack,
            consumers=[wrapped_consumer],
            **kwargs,
        )


#: The name the original documentation uses.
ConsumerHandler = MessageDispatcher

__all__ = ["ConsumerHandler", "DispatcherStats", "MessageDispatcher", "SimpleMessageDispatcher"]
