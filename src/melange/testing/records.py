"""What a :class:`~melange.testing.harness.Harness` records, and how records are matched.

Each record keeps the envelope (:class:`~melange.models.Message`) and the payload (the object
published, or the one a consumer was given), plus what happened to it. A :class:`Query` says
which records an assertion is about (a type, a destination, field values, headers) and, when
nothing matches, explains for each record why not: that text is the assertion's message.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from melange.models import Message

#: How a message was settled: the values of the engine's
#: :class:`~melange.dispatch.decisions.Action`.
SettleAction = Literal["ack", "retry", "release", "abandon", "dead_letter"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 160
_repr.maxlevel = 3


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else _repr.repr(value)


@dataclass(frozen=True)
class Record:
    """Something that happened to one message.

    Attributes:
        message: The envelope (id, manifest, headers, attempt).
        payload: The message's object: as published, or as a consumer was given it (``None``
            when it could not be decoded).
        at: When, by the harness's clock.
    """

    message: Message
    payload: Any
    at: float

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's headers."""
        return self.message.headers

    @property
    def message_id(self) -> str:
        """The message's id."""
        return self.message.message_id

    @property
    def manifest(self) -> str | None:
        """The message's manifest (its type's name, for most serializers)."""
        return self.message.manifest

    @property
    def where(self) -> str:
        """The destination or queue, as a phrase (``"to topic 'orders'"``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line: the payload and where it went."""
        return f"{_short(self.payload)} {self.where}"


@dataclass(frozen=True)
class PublishedMessage(Record):
    """A message a publisher sent (``kind`` says whether to a queue or a topic)."""

    destination: str = ""
    kind: Literal["queue", "topic"] = "queue"
    delay_seconds: float | None = None

    @property
    def where(self) -> str:
        delay = f" delayed {self.delay_seconds:g}s" if self.delay_seconds else ""
        return f"to {self.kind} {self.destination!r}{delay}"


@dataclass(frozen=True)
class ConsumedMessage(Record):
    """A message handed to a consumer, and what the consumer did with it.

    Attributes:
        queue: The queue it came from.
        consumer: The consumer's name.
        outcome: ``"succeeded"``, ``"failed"``, ``"skipped_duplicate"``, ``"busy"`` or
            ``"not_attempted"``.
        error: What the consumer raised, when it failed.
    """

    queue: str = ""
    consumer: str = ""
    outcome: str = "succeeded"
    error: BaseException | None = None

    @property
    def attempt(self) -> int | None:
        """Which delivery of the message this was (1 for the first)."""
        return self.message.attempt

    @property
    def where(self) -> str:
        failed = f", failed: {type(self.error).__name__}: {self.error}" if self.error else ""
        return f"from {self.queue!r} by {self.consumer} ({self.outcome}{failed})"


@dataclass(frozen=True)
class SettledMessage(Record):
    """How a dispatcher settled a message: acknowledged, retried (after ``delay``),
    released, abandoned or dead-lettered (with ``reason``)."""

    queue: str = ""
    action: SettleAction = "ack"
    delay: float = 0.0
    reason: str = ""
    exception_type: str = ""
    consumer: str = ""

    @property
    def attempt(self) -> int | None:
        """Which delivery of the message was settled (1 for the first)."""
        return self.message.attempt

    @property
    def where(self) -> str:
        text = f"from {self.queue!r}: {self.action.replace('_', '-')}"
        if self.action in ("retry", "release"):
            text += f" in {self.delay:.3g}s"
        if self.reason:
            text += f" ({self.reason})"
        return text


_MISSING = object()


def field_of(payload: Any, name: str) -> Any:
    """The field ``name`` of a payload: a key of a mapping, else an attribute."""
    if isinstance(payload, Mapping):
        return payload.get(name, _MISSING)
    return getattr(payload, name, _MISSING)


def _type_name(kind: type | str | None) -> str:
    if kind is None:
        return "message"
    return kind if isinstance(kind, str) else kind.__name__


@dataclass(frozen=True)
class Query:
    """Which records an assertion is about.

    Attributes:
        kind: A class (the payload must be an instance), a manifest string, or ``None``
            (any message).
        fields: Values the payload's fields (attributes, or keys of a mapping) must equal.
        headers: Headers the message must carry, with these values.
        place: Where the record must be (destination or queue name), if given.
        extra: Further conditions, each with its description and a function telling why a
            record misses it (``None`` when it does not).
    """

    kind: type | str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    place: str | None = None
    extra: Sequence[tuple[str, Callable[[Any], str | None]]] = ()

    def describe(self, verb: str) -> str:
        """``"a publish of OrderCreated with id=1 on 'orders'"``, for ``verb="a publish"``."""
        text = f"{verb} of {_type_name(self.kind)}"
        conditions = [f"{name}={value!r}" for name, value in self.fields.items()]
        conditions += [f"header {name}={value!r}" for name, value in self.headers.items()]
        conditions += [description for description, _ in self.extra if description]
        if conditions:
            text += " with " + ", ".join(conditions)
        if self.place is not None:
            text += f" on {self.place!r}"
        return text

    def mismatch(self, record: Record, place: str) -> str | None:
        """Why ``record`` (at ``place``) is not one of these, or ``None`` if it is."""
        kind = self.kind
        if isinstance(kind, str):
            if record.manifest != kind and type(record.payload).__name__ != kind:
                return f"is {record.manifest or type(record.payload).__name__}, not {kind}"
        elif kind is not None and not isinstance(record.payload, kind):
            return f"is {type(record.payload).__name__}, not {kind.__name__}"
        if self.place is not None and place != self.place:
            return f"on {place!r}, not {self.place!r}"
        for name, expected in self.fields.items():
            actual = field_of(record.payload, name)
            if actual is _MISSING:
                return f"it has no {name}"
            if actual != expected:
                return f"{name} was {_short(actual)}, not {_short(expected)}"
        for name, expected in self.headers.items():
            actual = record.headers.get(name)
            if actual != expected:
                shown = "missing" if actual is None else repr(actual)
                return f"header {name} was {shown}, not {expected!r}"
        for _, check in self.extra:
            why = check(record)
            if why is not None:
                return why
        return None


def explain(
    query: Query,
    verb: str,
    records: Sequence[tuple[Record, str]],
    matched: int,
    times: int | None,
    title: str,
) -> str:
    """The message of a failed assertion: what was expected, and each record with why it
    does not match (or that it does, when the count was wrong)."""
    wanted = query.describe(verb)
    if times is None:
        head = f"expected {wanted}, but none matched"
    else:
        head = f"expected exactly {times} of: {wanted}; {matched} matched"
    if not records:
        return f"{head}: nothing was {title}"
    lines = [f"{head}; {len(records)} {title}:"]
    for number, (record, place) in enumerate(records, 1):
        why = query.mismatch(record, place)
        note = "matches" if why is None else why
        lines.append(f"  {number}. {record.describe()}  <- {note}")
    return "\n".join(lines)


__all__ = [
    "ConsumedMessage",
    "PublishedMessage",
    "Query",
    "Record",
    "SettleAction",
    "SettledMessage",
    "explain",
    "field_of",
]
