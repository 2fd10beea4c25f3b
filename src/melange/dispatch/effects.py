"""What the dispatch engine asks its driver to do.

The engine (:mod:`melange.dispatch.engine`) is written as generators that *yield* these
effects and receive their results: it decides, a driver performs. The threaded driver performs
an effect by calling the backend, the cache or the consumer; the asyncio driver awaits them; a
simulation can answer them from a model of a broker. An effect that fails is thrown back into
the engine as the exception it raised.

Each effect names its result in its docstring. Effects are plain slotted classes, not
frozen ones: one or two are made per message, and a frozen dataclass costs twice as much to
build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from melange.consumers import Consumer
from melange.models import Message, QueueWrapper


@dataclass(slots=True)
class Receive:
    """Receive a batch from ``queue`` (``retrieve_messages`` options in ``options``).
    Result: the list of messages."""

    queue: QueueWrapper
    options: Mapping[str, Any]


@dataclass(slots=True)
class Holds:
    """Whether the backend can still settle ``message``. Result: ``bool``."""

    message: Message


@dataclass(slots=True)
class Invoke:
    """Run ``consumer`` on ``payload`` (awaiting it when it is asynchronous).
    Result: ``None``; the consumer's exception is thrown back."""

    consumer: Consumer
    payload: Any


@dataclass(slots=True)
class Fetch:
    """Fetch the payload ``message``'s claim check refers to. Result: a copy of ``message``
    with the payload as its body (see :mod:`melange.claimcheck`)."""

    message: Message


@dataclass(slots=True)
class Claim:
    """Take the deduplication claim on ``key`` for ``lease`` seconds.
    Result: a :class:`~melange.deduplication.cache.ClaimState`."""

    key: str
    lease: float


@dataclass(slots=True)
class FinishClaim:
    """Mark ``key`` done (``done``) or give its claim up after a failure. Result: ``None``."""

    key: str
    done: bool


@dataclass(slots=True)
class ProbeCache:
    """Check that the deduplication cache answers. Result: ``None``, or it raises."""


@dataclass(slots=True)
class Watch:
    """Keep renewing the leases of ``messages`` (and of the claim ``key``, for ``lease``
    seconds at a time) until unwatched. ``since``: when the messages' leases began (the
    receive request, on the engine's clock), if not now. Result: ``None``."""

    messages: Sequence[Message] = ()
    key: str | None = None
    lease: float = 0.0
    since: float | None = None


@dataclass(slots=True)
class Unwatch:
    """Stop renewing what :class:`Watch` registered. Result: ``None``."""

    messages: Sequence[Message] = ()
    key: str | None = None


@dataclass(slots=True)
class Ack:
    """Acknowledge ``messages`` (in one round trip where the backend can). Result: ``None``."""

    messages: Sequence[Message]


@dataclass(slots=True)
class Nack:
    """A failed attempt: ``message`` comes back after ``delay`` seconds. Result: ``None``."""

    message: Message
    delay: float


@dataclass(slots=True)
class Release:
    """Give ``message`` back unprocessed after ``delay`` seconds, not as an attempt.
    Result: ``None``."""

    message: Message
    delay: float = 0.0


@dataclass(slots=True)
class DeadLetter:
    """Move ``message`` to its dead-letter queue with ``headers``.
    Result: ``bool`` (``False``: the queue has none)."""

    message: Message
    headers: Mapping[str, str]


@dataclass(slots=True)
class Sleep:
    """Wait ``seconds``, or less if the dispatcher is stopped. Result: ``None``."""

    seconds: float


#: Every effect the engine yields.
Effect = (
    Receive
    | Holds
    | Invoke
    | Fetch
    | Claim
    | FinishClaim
    | ProbeCache
    | Watch
    | Unwatch
    | Ack
    | Nack
    | Release
    | DeadLetter
    | Sleep
)

__all__ = [
    "Ack",
    "Claim",
    "DeadLetter",
    "Effect",
    "Fetch",
    "FinishClaim",
    "Holds",
    "Invoke",
    "Nack",
    "ProbeCache",
    "Receive",
    "Release",
    "Sleep",
    "Unwatch",
    "Watch",
]
