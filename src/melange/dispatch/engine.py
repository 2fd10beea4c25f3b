"""The dispatch engine: every step of handling a message, written once.

The engine is the sequence of decisions between receiving a message and settling it:
whether the backend still holds it, decoding (poison goes to the dead-letter queue), routing,
the deduplication claim, calling each consumer (with immediate retries), weighing the
outcomes against the failure policy, and settling (acknowledge, retry, release without using
up an attempt, dead-letter, or the fallback for a queue without a dead-letter queue). Around
that it keeps FIFO groups in order within a batch, gives back what it had not started when
the dispatcher stops, backs off after receive errors and waits for an unreachable cache.

It performs no I/O itself. Its methods are generators that yield
:mod:`~melange.dispatch.effects` and are sent back their results; a *driver* performs them.
The threaded driver (:class:`~melange.dispatch.threaded.MessageDispatcher`) and the asyncio
driver (:class:`~melange.dispatch.aio.AsyncMessageDispatcher`) differ only in how they
perform effects and schedule messages, so a decision cannot drift between them, and a
simulation can drive the same engine with a virtual clock and injected faults.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from melange.consumers import Consumer
from melange.context import _current as _current_message
from melange.deduplication.cache import ClaimState
from melange.dispatch.decisions import (
    ABANDON,
    ACK,
    Action,
    ConsumerResult,
    Decoded,
    Outcome,
    Poison,
    Route,
    Verdict,
    decode,
    describe_exception,
    payload_unavailable_verdict,
    poison_verdict,
    settle,
)
from melange.dispatch.effects import (
    Ack,
    Claim,
    DeadLetter,
    Effect,
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
from melange.dispatch.leases import RENEWAL_FRACTION
from melange.dispatch.middleware import MiddlewareChain
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.stats import DispatcherStats
from melange.exceptions import InvalidDeduplicationKeyError, SerializationError
from melange.models import CLAIM_CHECK, Message, QueueWrapper
from melange.serializers.registry import SerializerRegistry

logger = logging.getLogger("melange.dispatcher")

T = TypeVar("T")
#: A step of the engine: a generator of effects that returns a ``T``.
Step = Generator[Effect, Any, T]

_NO_MIDDLEWARE = MiddlewareChain()

#: Least delay, in seconds, before a message that should be dead-lettered but whose queue has
#: no dead-letter queue comes back.
NO_DEAD_LETTER_QUEUE_DELAY = 5.0

#: A claim answered after this fraction of its lease is not trusted: its first renewal, due a
#: renewal interval after the answer, would leave no margin before the lease runs out.
CLAIM_ANSWER_LIMIT = RENEWAL_FRACTION


class Engine:
    """The decisions of one dispatcher, as generators of effects (see the module doc).

    Args:
        registry: The serializers messages may be decoded with.
        route: The consumers and how each is asked whether it accepts a message.
        policy: The dispatcher's failure policy (a consumer's own overrides it).
        stats: Where the counters go.
        deduplicate: Whether a deduplication cache is used (claims are then effects).
        lease: Lease of a deduplication claim, in seconds.
        fail_open: Process without deduplication while the cache is unreachable.
        always_ack: Acknowledge whatever the consumers did.
        watch_messages: Renew the leases of messages in hand (a backend with leases).
        check_holds: Ask whether the backend still holds each message before handling it
            (a backend whose messages can be orphaned by a lost connection).
        middleware: The middleware chain.
        notify: Called with every exception (the consume loop's ``on_exception``).
        stopping: Whether the dispatcher was asked to stop.
        rng: Random source of the retry jitter.
        clock: Monotonic clock, in seconds (to time deduplication claims).
        claim_check: Fetch the payload of a message carrying a claim check reference
            (:class:`~melange.dispatch.effects.Fetch`) before decoding it.
    """

    def __init__(
        self,
        registry: SerializerRegistry,
        route: Route,
        policy: FailurePolicy,
        stats: DispatcherStats,
        *,
        deduplicate: bool,
        lease: float,
        fail_open: bool,
        always_ack: bool,
        watch_messages: bool,
        check_holds: bool = True,
        middleware: MiddlewareChain = _NO_MIDDLEWARE,
        notify: Callable[[BaseException], None] = lambda exc: None,
        stopping: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        claim_check: bool = False,
    ) -> None:
        self.registry = registry
        self.route = route
        self.policy = policy
        self.stats = stats
        self.deduplicate = deduplicate
        self.lease = lease
        self.fail_open = fail_open
        self.always_ack = always_ack
        self.watch_messages = watch_messages
        self.check_holds = check_holds
        self.middleware = middleware
        self.notify = notify
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.clock = clock
        self.claim_check = claim_check
        #: Set while the deduplication cache is unreachable and the dispatcher fails closed:
        #: receiving then waits for it (see :meth:`receive`).
        self.cache_down = False
        self._receive_failures = 0
        #: When (by ``clock``) the consume loop last turned: asked for a batch or settled a
        #: message. A liveness probe compares it with the time now.
        self.last_turn = clock()

    @property
    def receive_failing(self) -> bool:
        """Whether the last receive failed (the broker could not be reached)."""
        return self._receive_failures > 0

    # -- the consume loop -------------------------------------------------------------------

    def receive(self, queue: QueueWrapper, options: dict[str, Any]) -> Step[list[Message]]:
        """Receive a batch; on a broker error log it, back off and return nothing.

        While the cache is unreachable (failing closed) it waits for the cache first:
        receiving anyway would only hand the same messages back again and again.
        """
        if self.cache_down:
            yield from self.wait_for_cache()
        if self.stopping():
            return []  # a receive now would only take messages from other consumers
        asked = self.last_turn = self.clock()
        try:
            messages: list[Message] = yield Receive(queue, options)
        except Exception as exc:
            self._receive_failures += 1
            pause = min(30.0, 0.5 * 2 ** min(self._receive_failures, 6))
            logger.error(
                "receiving from %s failed (%s); retrying in %.1fs",
                queue.name,
                describe_exception(exc),
                pause,
                exc_info=True,
                extra={"queue": queue.name},
            )
            self.notify(exc)
            yield Sleep(pause)
            return []
        self._receive_failures = 0
        if messages and self.watch_messages:
            # In hand from now on: messages waiting for a worker, or for the previous message
            # of their FIFO group, must not see their lease expire while they wait. Their
            # leases began when the receive was asked: a slow answer brings renewals forward.
            yield Watch(messages=messages, since=asked)
        return messages

    def wait_for_cache(self) -> Step[None]:
        """Probe the unreachable cache with growing pauses until it answers (or a stop)."""
        failures = 0
        while self.cache_down and not self.stopping():
            yield Sleep(min(5.0, 0.1 * 2**failures))
            try:
                yield ProbeCache()
            except Exception:
                failures = min(failures + 1, 6)
                continue
            logger.info("deduplication cache reachable again: resuming")
            self.cache_down = False

    # -- batches and single messages --------------------------------------------------------

    def dispatch(
        self, messages: Sequence[Message], queue_name: str, watched: bool = False
    ) -> Step[None]:
        """Handle and settle a batch in order, acknowledging the successes together.

        A FIFO group with a message coming back has its later messages of the batch given
        back too, and a stop gives back what was not started. ``watched`` says that
        :meth:`receive` returned the batch, which is then watched already.
        """
        self.stats.add("received", len(messages))
        if not messages:
            return
        acks: list[Message] = []
        held: set[str] = set()  # FIFO groups with a message coming back
        watch = self.watch_messages
        if watch and not watched:
            # Every message of the batch is in hand until settled, not only the one running.
            yield Watch(messages=messages)
        index = 0
        try:
            for index, message in enumerate(messages):
                if self.stopping():
                    yield from self.give_back(messages[index:], watch)
                    break
                if message.group_id is not None and message.group_id in held:
                    yield from self.give_back([message], watch)
                    continue
                verdict = yield from self.handle(message, queue_name)
                if verdict.action is Action.ACK:
                    acks.append(message)
                    continue
                if watch:
                    yield Unwatch(messages=(message,))
                if not (yield from self.apply(verdict, message, queue_name)) and message.group_id:
                    held.add(message.group_id)
        except BaseException:
            # A consumer stopped the process (SystemExit, KeyboardInterrupt): what succeeded
            # is still acknowledged, what was not started comes back.
            yield from self.give_back(messages[index + 1 :], watch)
            yield from self._finish_batch(messages, acks, queue_name, watch)
            raise
        yield from self._finish_batch(messages, acks, queue_name, watch)

    def _finish_batch(
        self, messages: Sequence[Message], acks: list[Message], queue_name: str, watch: bool
    ) -> Step[None]:
        if watch:
            yield Unwatch(messages=messages)
        if acks:
            # One round trip for the whole batch where the backend supports it.
            try:
                yield Ack(acks)
            except Exception as exc:
                self.stats.add("unsettled", len(acks))
                if self.middleware:
                    for message in acks:
                        self.middleware.settle_failed(message, queue_name, exc)
                raise
            self.last_turn = self.clock()
            self.stats.add("acknowledged", len(acks))
            if self.middleware:
                for message in acks:
                    self.middleware.message_settled(message, queue_name, ACK)

    def process(self, message: Message, queue_name: str, go_ahead: bool = True) -> Step[bool]:
        """Handle and settle one message; returns whether it is settled for good (so the next
        message of its FIFO group may go ahead). ``go_ahead`` is false when the previous
        message of its group is coming back: then this one is given back too."""
        self.stats.add("received")
        # Its lease is renewed since it was received (see receive), until settled.
        if self.stopping() or not go_ahead:
            yield from self.give_back([message], self.watch_messages)
            return False
        try:
            verdict = yield from self.handle(message, queue_name)
        finally:
            if self.watch_messages:
                yield Unwatch(messages=(message,))
        return (yield from self.apply(verdict, message, queue_name))

    @staticmethod
    def may_go_ahead(previous_settled_for_good: bool, same_batch: bool) -> bool:
        """Whether a message of a FIFO group may be handled once the group's previous
        message is done.

        Messages of a group run one after the other. When the previous one is coming back,
        the later ones received with it (in the same batch) must come back too, or they would
        overtake it. A message received in a later batch was delivered after the previous one
        was settled (a FIFO broker holds a group while one of its messages is out), so it goes
        ahead whatever became of that one: giving it back too would only make it circle.
        """
        return previous_settled_for_good or not same_batch

    def give_back(self, messages: Sequence[Message], watched: bool) -> Step[None]:
        """Release ``messages``, unprocessed; their leases, when ``watched``, stop being
        renewed first (a renewal reaching the broker after the release would hide them for
        a whole lease)."""
        if watched and messages:
            yield Unwatch(messages=messages)
        yield from self.release(messages)

    def release(self, messages: Sequence[Message]) -> Step[None]:
        """Give ``messages`` back unprocessed, not as attempts."""
        for message in messages:
            self.stats.add("released")
            try:
                yield Release(message, 0.0)
            except Exception:
                logger.warning("could not release message %s", message.message_id, exc_info=True)

    # -- one message ------------------------------------------------------------------------

    def handle(self, message: Message, queue_name: str) -> Step[Verdict]:
        """Decode, route and run the consumers; returns how to settle the message.

        A consumer raising ``SystemExit`` or ``KeyboardInterrupt`` asks the process to stop:
        the message is given back (not an attempt) and the exception goes on to the driver.
        """
        if self.check_holds and not (yield Holds(message)):
            return ABANDON
        # Asked once per message (a chain is false while none of its middlewares is active).
        middleware = self.middleware if self.middleware else None
        if middleware is not None:
            middleware.message_received(message, queue_name)
        if self.claim_check and CLAIM_CHECK in message.headers:
            # The payload is in a payload store: decode the copy that carries it. The message
            # itself is settled as received (a dead-lettered copy keeps the reference).
            try:
                resolved = yield Fetch(message)
            except SerializationError as exc:
                # The reference itself cannot be read: no retry makes it readable.
                decoded: Decoded | Poison = Poison(str(exc), type(exc).__name__)
            except Exception as exc:
                self.notify(exc)
                verdict = payload_unavailable_verdict(exc, message.attempt, self.policy, self.rng)
                logger.warning(
                    "message %s on %s: %s",
                    message.message_id,
                    queue_name,
                    verdict.reason,
                    extra=_log_extra(message, queue_name, "", "payload_unavailable"),
                )
                return verdict
            else:
                decoded = decode(resolved, self.registry)
        else:
            decoded = decode(message, self.registry)
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
        payload = decoded.payload
        consumers = self.route.select(payload, message.manifest)
        if not consumers:
            return ACK
        try:
            # The message is the current one while its consumers run (what
            # melange.context.processing does, without a context manager per message).
            token = _current_message.set(message)
            try:
                if len(consumers) == 1 and self._plain(consumers[0]):
                    # The common case, kept cheap: one consumer, no claim, no immediate
                    # retries (the middleware's hooks are the ones _run would call).
                    try:
                        if middleware is not None:
                            with middleware.consumer_call(message, consumers[0]):
                                yield Invoke(consumers[0], payload)
                        else:
                            yield Invoke(consumers[0], payload)
                    except Exception as exc:
                        result = yield from self._finish(
                            consumers[0], message, queue_name, None, exc
                        )
                        results = [result]
                    else:
                        if middleware is not None:
                            middleware.consumer_finished(
                                message, consumers[0], Outcome.SUCCEEDED, None
                            )
                        return ACK
                else:
                    results = []
                    for consumer in consumers:
                        result = yield from self._run(consumer, payload, message, queue_name)
                        results.append(result)
            finally:
                _current_message.reset(token)
        except (SystemExit, KeyboardInterrupt):
            logger.error(
                "a consumer asked to stop the process while handling message %s; it is given back",
                message.message_id,
                extra=_log_extra(message, queue_name, "", "interrupted"),
            )
            yield from self.give_back([message], self.watch_messages)
            raise
        if len(results) == 1 and results[0].outcome is Outcome.SUCCEEDED:
            return ACK  # one consumer, and it succeeded: nothing to weigh
        return settle(
            results,
            message.attempt,
            self.policy,
            always_ack=self.always_ack,
            rng=self.rng,
            busy_delay=self.lease,
        )

    def _plain(self, consumer: Consumer) -> bool:
        """Whether running ``consumer`` involves nothing but calling it once (inside the
        middleware's context, if any)."""
        if self.deduplicate:
            return False
        policy = consumer.failure_policy or self.policy
        return policy.immediate_retries == 0

    def _run(
        self, consumer: Consumer, payload: Any, message: Message, queue_name: str
    ) -> Step[ConsumerResult]:
        key = None
        if self.deduplicate:
            early, key = yield from self._claim(consumer, message, queue_name)
            if early is not None:
                if self.middleware:
                    self.middleware.consumer_finished(message, consumer, early.outcome, None)
                return early
        policy = consumer.failure_policy or self.policy
        error: Exception | None = None
        middleware = self.middleware
        try:
            for _ in range(policy.immediate_retries + 1):
                try:
                    if middleware:
                        with middleware.consumer_call(message, consumer):
                            yield Invoke(consumer, payload)
                    else:
                        yield Invoke(consumer, payload)
                except Exception as exc:
                    error = exc
                    continue
                error = None
                break
        except BaseException:
            if key is not None:
                # The consumer stopped the process: the message is given back, so give its
                # claim up too, or the next delivery would wait for the claim to expire.
                yield Unwatch(key=key)
                try:
                    yield FinishClaim(key, done=False)
                except Exception:
                    logger.warning("could not give up the claim %r", key, exc_info=True)
            raise
        if error is None and key is None and not middleware:
            return ConsumerResult(consumer, Outcome.SUCCEEDED)  # the common case, kept cheap
        return (yield from self._finish(consumer, message, queue_name, key, error))

    def _claim(
        self, consumer: Consumer, message: Message, queue_name: str
    ) -> Step[tuple[ConsumerResult | None, str | None]]:
        """Take the deduplication claim for ``consumer``.

        Returns a final result when the consumer must not run now, else ``None`` and the
        claimed key (``None`` when deduplication does not apply).
        """
        key = f"{consumer.name}.{message.message_id}"
        asked = self.clock()
        try:
            state = yield Claim(key, self.lease)
        except InvalidDeduplicationKeyError as exc:
            # The message's id made a key the cache cannot store: the message is at fault,
            # not the cache. It fails for good (dead-lettered with this reason).
            logger.error(
                "message %s cannot be deduplicated: %s",
                message.message_id,
                describe_exception(exc),
                extra=_log_extra(message, queue_name, consumer.name, "invalid_key"),
            )
            return ConsumerResult(consumer, Outcome.FAILED, exc), None
        except Exception as exc:
            logger.error(
                "deduplication cache unreachable for message %s (%s): %s",
                message.message_id,
                describe_exception(exc),
                "processing without deduplication" if self.fail_open else "leaving it for later",
                extra=_log_extra(message, queue_name, consumer.name, "cache_error"),
            )
            self.notify(exc)
            if not self.fail_open:
                self.cache_down = True
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
        waited = self.clock() - asked
        if waited >= self.lease * CLAIM_ANSWER_LIMIT:
            # The claim's first renewal would come after its lease ran out: another process
            # may hold it by now. Treat it as busy; unrenewed, ours expires by itself.
            logger.warning(
                "deduplication cache answered the claim on %s after %.1fs, too late for its "
                "%.1fs lease: message %s is given back",
                key,
                waited,
                self.lease,
                message.message_id,
                extra=_log_extra(message, queue_name, consumer.name, "slow_cache"),
            )
            return ConsumerResult(consumer, Outcome.BUSY), None
        yield Watch(key=key, lease=self.lease)  # renewed while the consumer runs: kept short
        return None, key

    def _finish(
        self,
        consumer: Consumer,
        message: Message,
        queue_name: str,
        key: str | None,
        error: Exception | None,
    ) -> Step[ConsumerResult]:
        """Record a consumer's outcome: logs, counters, and the deduplication claim."""
        if key is not None:
            yield Unwatch(key=key)
        if error is not None:
            self.stats.add("consumer_failures")
            # The retry or dead-letter decision that follows is logged once, with this
            # traceback; only a failure that decides nothing (always_ack) is an error here.
            logger.log(
                logging.ERROR if self.always_ack else logging.DEBUG,
                "consumer %s failed on message %s (attempt %s): %s",
                consumer.name,
                message.message_id,
                message.attempt,
                describe_exception(error),
                exc_info=error,
                extra=_log_extra(message, queue_name, consumer.name, "failed"),
            )
            self.notify(error)
            result = ConsumerResult(consumer, Outcome.FAILED, error)
        else:
            result = ConsumerResult(consumer, Outcome.SUCCEEDED)
        if key is not None:
            try:
                yield FinishClaim(key, done=error is None)
            except Exception as exc:
                action = "mark_done" if error is None else "release"
                logger.error(
                    "deduplication cache %s(%r) failed: %s", action, key, describe_exception(exc)
                )
                self.notify(exc)
        if self.middleware:
            self.middleware.consumer_finished(message, consumer, result.outcome, error)
        return result

    # -- settling ---------------------------------------------------------------------------

    def apply(self, verdict: Verdict, message: Message, queue_name: str) -> Step[bool]:
        """Settle ``message`` as ``verdict`` says; returns whether it is settled for good."""
        try:
            settled = yield from self._apply(verdict, message, queue_name)
        except Exception as exc:
            self.stats.add("unsettled")  # the broker delivers it again
            if self.middleware:
                self.middleware.settle_failed(message, queue_name, exc)
            raise
        self.last_turn = self.clock()
        if self.middleware:
            self.middleware.message_settled(message, queue_name, verdict)
        return settled

    def _apply(self, verdict: Verdict, message: Message, queue_name: str) -> Step[bool]:
        action = verdict.action
        if action is Action.ACK:
            yield Ack((message,))
            self.stats.add("acknowledged")
            return True
        if action is Action.ABANDON:
            # Its connection is gone: the broker delivers it again, to us or to another.
            self.stats.add("released")
            return False
        if action is Action.RELEASE:
            logger.info(
                "message %s given back for %.2fs: %s",
                message.message_id,
                verdict.delay,
                verdict.reason,
                extra=_log_extra(message, queue_name, verdict.consumer, "released"),
            )
            yield Release(message, verdict.delay)
            self.stats.add("released")
            return False
        if action is Action.RETRY:
            logger.warning(
                "message %s will be retried in %.2fs: %s",
                message.message_id,
                verdict.delay,
                verdict.reason,
                exc_info=verdict.error,
                extra=_log_extra(message, queue_name, verdict.consumer, "retry"),
            )
            yield Nack(message, verdict.delay)
            self.stats.add("retried")
            return False
        headers = verdict.failure_headers(message, queue_name)
        if (yield DeadLetter(message, headers)):
            self.stats.add("dead_lettered")
            logger.error(
                "message %s dead-lettered: %s",
                message.message_id,
                verdict.reason,
                exc_info=verdict.error,
                extra=_log_extra(message, queue_name, verdict.consumer, "dead_lettered"),
            )
            return True
        # Never at once: a message that can only fail would otherwise circle without pause
        # and starve the rest of the queue.
        delay = max(NO_DEAD_LETTER_QUEUE_DELAY, self.policy.delay_for(message.attempt, self.rng))
        logger.error(
            "message %s should be dead-lettered (%s) but queue %s has no dead-letter queue; "
            "it is left for the broker's redrive and retried in %.1fs",
            message.message_id,
            verdict.reason,
            queue_name,
            delay,
            exc_info=verdict.error,
            extra=_log_extra(message, queue_name, verdict.consumer, "no_dead_letter_queue"),
        )
        yield Nack(message, delay)
        self.stats.add("retried")
        return False


def _log_extra(message: Message, queue: str, consumer: str, outcome: str) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "queue": queue,
        "consumer": consumer,
        "attempt": message.attempt,
        "outcome": outcome,
    }


__all__ = ["Engine", "Step"]
