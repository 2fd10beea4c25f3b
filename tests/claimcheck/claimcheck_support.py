"""Brokers, payloads and consume loops for the claim check tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange.aio import AsyncMessageDispatcher
from melange.backends.interfaces import MessagingBackend
from melange.claimcheck import ClaimCheck
from melange.consumers import Consumer
from melange.dispatch.decisions import Verdict
from melange.dispatch.middleware import Middleware
from melange.dispatch.policy import FailurePolicy
from melange.message_dispatcher import MessageDispatcher
from melange.models import Message
from melange.serializers.json import JsonSerializer

#: Two attempts, quickly: a payload that cannot be fetched is dead-lettered within seconds.
QUICK_POLICY = FailurePolicy(max_attempts=2, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)


def large_payload(size: int, tag: str = "") -> dict[str, Any]:
    """A JSON object whose serialized body is a little over ``size`` bytes."""
    chunk = uuid.uuid4().hex
    return {"tag": tag or uuid.uuid4().hex, "blob": (chunk * (size // len(chunk) + 1))[:size]}


@dataclass
class Broker:
    """One backend and the queues a test made on it (deleted at the end)."""

    backend: MessagingBackend
    prefix: str = "cc"
    made_queues: list[Any] = field(default_factory=list)
    made_topics: list[Any] = field(default_factory=list)

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}-{uuid.uuid4().hex[:10]}"

    def queue(self, *topics: str, fifo: bool = False) -> tuple[str, str]:
        """A new queue (bound to ``topics``) with a dead-letter queue: their names."""
        suffix = ".fifo" if fifo else ""
        name, dlq = self.name("q") + suffix, self.name("dlq") + suffix
        handles = [self.backend.declare_topic(topic) for topic in topics]
        queue, dead = self.backend.declare_queue(name, *handles, dead_letter_queue_name=dlq)
        self.made_queues.append(queue)
        if dead is not None:
            self.made_queues.append(dead)
        return name, dlq

    def topic(self) -> str:
        name = self.name("t")
        self.made_topics.append(self.backend.declare_topic(name))
        return name

    def dead_letters(self, dlq: str, count: int = 1, timeout: float = 30.0) -> list[Message]:
        """The first ``count`` messages of the dead-letter queue ``dlq`` (acknowledged)."""
        queue = self.backend.get_queue(dlq)
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            for message in self.backend.retrieve_messages(queue, wait_seconds=1):
                self.backend.acknowledge(message)
                found.append(message)
        return found

    def cleanup(self) -> None:
        for queue in self.made_queues:
            with contextlib.suppress(Exception):
                self.backend.delete_queue(queue)
        for topic in self.made_topics:
            with contextlib.suppress(Exception):
                self.backend.delete_topic(topic)


class Recorder:
    """A consumer's record of the payloads it was given."""

    def __init__(self) -> None:
        self.payloads: list[Any] = []
        #: When (``time.perf_counter``) the first payload arrived.
        self.first_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, payload: Any) -> None:
        with self._lock:
            self.payloads.append(payload)
            if self.first_at is None:
                self.first_at = time.perf_counter()

    def consumer(self) -> Consumer:
        return Consumer(on_message=self)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def consume(
    driver: str,
    backend: MessagingBackend,
    queue: str,
    consumer: Consumer,
    until: Callable[[], bool],
    *,
    claim_check: ClaimCheck | None,
    timeout: float = 60.0,
    policy: FailurePolicy = QUICK_POLICY,
    middleware: Sequence[Middleware] = (),
) -> bool:
    """Run a ``driver`` (``"threaded"`` or ``"asyncio"``) dispatcher on ``queue`` until
    ``until()`` holds or ``timeout`` passes; returns whether it held."""
    if driver == "threaded":
        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[consumer],
            failure_policy=policy,
            claim_check=claim_check,
            middleware=middleware,
        )
        thread = threading.Thread(
            target=dispatcher.consume_loop,
            args=(queue,),
            kwargs={"install_signal_handlers": False, "wait_seconds": 1},
            daemon=True,
        )
        thread.start()
        try:
            return wait_for(until, timeout)
        finally:
            dispatcher.stop()
            thread.join(30)
    return asyncio.run(
        _consume_async(backend, queue, consumer, until, claim_check, timeout, policy, middleware)
    )


async def _consume_async(
    backend: MessagingBackend,
    queue: str,
    consumer: Consumer,
    until: Callable[[], bool],
    claim_check: ClaimCheck | None,
    timeout: float,
    policy: FailurePolicy,
    middleware: Sequence[Middleware],
) -> bool:
    dispatcher = AsyncMessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[consumer],
        failure_policy=policy,
        claim_check=claim_check,
        middleware=middleware,
    )
    task = asyncio.create_task(
        dispatcher.consume_loop(queue, install_signal_handlers=False, wait_seconds=1)
    )
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            if task.done():
                task.result()  # the loop ended early: raise its error
            await asyncio.sleep(0.05)
        return until()
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)


class Settlements(Middleware):
    """Records how each message was settled."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []

    def message_settled(self, message: Message, queue: str, verdict: Verdict) -> None:
        self.verdicts.append(verdict)

    def actions(self) -> list[str]:
        return [verdict.action.value for verdict in self.verdicts]
