"""How Melange's queues and topics are laid out on JetStream streams and subjects.

With the backend's ``prefix`` ``p`` (default ``melange``):

- queue ``Q``: stream ``p_q_Q`` (work-queue retention) on subject ``p.q.Q``, and its one
  durable pull consumer ``melange``;
- topic ``T``: stream ``p_t_T`` (limits retention, kept ``topic_max_age`` seconds) on subjects
  ``p.t.T.*``; a message goes to ``p.t.T.<manifest>``;
- ``Q`` subscribed to ``T``: ``p_q_Q`` *sources* ``p_t_T``: the server copies every message of
  the topic into the queue's stream, from the moment of the subscription on;
- ``filter_events=[M]``: the source is filtered on ``p.t.T.M`` (one manifest); with several,
  the receive acknowledges and drops the others (:meth:`QueueSettings.wants`);
- dead-letter queue ``D`` of ``Q``: the queue ``D``, named in ``p_q_Q``'s description (JSON,
  with the queue's other settings).

Names are written as subject tokens (:func:`token`): letters, digits, ``_`` and ``-`` stay,
every other character becomes ``~`` and its UTF-8 bytes in hex (``orders.fifo`` is
``orders~2efifo``), so any queue name is a valid stream name and subject token, and the
mapping can be read back (:func:`untoken`).

Each queue stream has its own copy of a topic's messages (fan-out by stream sources), so
queues subscribed to one topic consume independently, and a work-queue stream deletes a
message once its consumer acknowledged it.

What the backend can do on this layout is :func:`nats_capabilities`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange.backends.interfaces import DEFAULT_MAX_RECEIVE_COUNT, BackendCapabilities
from melange.exceptions import ConfigurationError

#: The durable pull consumer of every queue stream.
CONSUMER = "melange"
#: Seconds a received message stays with its receiver unless settled or renewed.
DEFAULT_VISIBILITY_TIMEOUT = 30.0
#: Messages a queue's consumer hands out before acknowledgements (per queue, all receivers).
DEFAULT_MAX_ACK_PENDING = 10_000
#: Seconds JetStream remembers a ``Nats-Msg-Id`` to drop a repeated publish.
DEFAULT_DUPLICATE_WINDOW = 120.0
#: Seconds a topic stream keeps a message (for a queue whose source fell behind).
DEFAULT_TOPIC_MAX_AGE = 3600.0
#: Largest message a NATS server takes by default (its ``max_payload``).
DEFAULT_MAX_PAYLOAD = 1024 * 1024

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")
_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ESCAPE = re.compile(r"~([0-9a-f]{2})")
_QUEUE_OPTIONS = frozenset(
    {"filter_events", "max_receive_count", "visibility_timeout", "fifo", "max_ack_pending"}
)


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can start stream names and subjects, else a ``ConfigurationError``."""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"NATS prefix {prefix!r} must be letters, digits, '_' or '-' (it starts stream "
            "names and subjects)"
        )
    return prefix


@functools.lru_cache(maxsize=4096)
def token(name: str) -> str:
    """``name`` as one subject token and part of a stream name (see the module docs).

    Cached: every publish and receive spells its queue's subject or stream name again."""
    if name == "":
        return "~"
    return "".join(
        c if _SAFE.match(c) else "".join(f"~{b:02x}" for b in c.encode("utf-8")) for c in name
    )


def untoken(text: str) -> str:
    """The name :func:`token` wrote as ``text``."""
    if text == "~":
        return ""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "~":
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += text[i].encode("ascii")
            i += 1
    return raw.decode("utf-8")


def is_fifo(name: str) -> bool:
    """Whether a queue name asks for a FIFO queue (the ``.fifo`` suffix, as on SQS)."""
    return name.endswith(".fifo")


@dataclass(frozen=True)
class Names:
    """The stream and subject names of one backend's prefix."""

    prefix: str

    def queue_stream(self, queue: str) -> str:
        return f"{self.prefix}_q_{token(queue)}"

    def queue_subject(self, queue: str) -> str:
        return f"{self.prefix}.q.{token(queue)}"

    def topic_stream(self, topic: str) -> str:
        return f"{self.prefix}_t_{token(topic)}"

    def topic_subjects(self, topic: str) -> str:
        return f"{self.prefix}.t.{token(topic)}.*"

    def topic_subject(self, topic: str, manifest: str | None) -> str:
        return f"{self.prefix}.t.{token(topic)}.{token(manifest or '')}"

    def queue_of_stream(self, stream: str) -> str | None:
        """The queue a stream name belongs to, or ``None`` (another prefix, or a topic)."""
        head = f"{self.prefix}_q_"
        return untoken(stream[len(head) :]) if stream.startswith(head) else None

    def topic_of_stream(self, stream: str) -> str | None:
        """The topic a stream name belongs to, or ``None``."""
        head = f"{self.prefix}_t_"
        return untoken(stream[len(head) :]) if stream.startswith(head) else None


@dataclass(frozen=True)
class QueueSettings:
    """What a queue stream records about its queue, in the stream's description (JSON).

    ``filters`` maps each subscribed topic to the manifests its messages must have (empty:
    every message), for the receive-side filter of a subscription with several manifests.
    """

    queue: str
    dead_letter_queue: str | None = None
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    fifo: bool = False
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def describe(self) -> str:
        data: dict[str, Any] = {
            "melange": 1,
            "queue": self.queue,
            "dead_letter_queue": self.dead_letter_queue,
            "max_receive_count": self.max_receive_count,
            "visibility_timeout": self.visibility_timeout,
            "fifo": self.fifo,
            "filters": {k: list(v) for k, v in sorted(self.filters.items())},
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @staticmethod
    def read(queue: str, description: str | None) -> QueueSettings:
        """The settings a stream description recorded (defaults where it says nothing)."""
        try:
            data = json.loads(description or "{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        filters = data.get("filters") or {}
        return QueueSettings(
            queue=queue,
            dead_letter_queue=data.get("dead_letter_queue"),
            max_receive_count=int(data.get("max_receive_count") or DEFAULT_MAX_RECEIVE_COUNT),
            visibility_timeout=float(data.get("visibility_timeout") or DEFAULT_VISIBILITY_TIMEOUT),
            fifo=bool(data.get("fifo", is_fifo(queue))),
            filters={str(k): tuple(v) for k, v in filters.items()},
        )

    def wants(self, topic_stream_subject: str, manifest: str | None, names: Names) -> bool:
        """Whether a message that came from a topic (its subject) passes the queue's filter."""
        for topic, manifests in self.filters.items():
            if topic_stream_subject.startswith(f"{names.prefix}.t.{token(topic)}."):
                return not manifests or (manifest or "") in manifests
        return True


@dataclass(frozen=True)
class QueueOptions:
    """The keyword options of ``declare_queue``, checked."""

    max_receive_count: int
    visibility_timeout: float
    fifo: bool
    filter_events: tuple[str, ...]
    max_ack_pending: int


def queue_options(
    queue: str, kwargs: Mapping[str, Any], visibility_timeout: float, max_ack_pending: int
) -> QueueOptions:
    """Check ``declare_queue``'s keyword options (unknown ones are an error)."""
    unknown = set(kwargs) - _QUEUE_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(sorted(unknown))} for NATS queue {queue!r}; "
            f"the NATS backend takes: {', '.join(sorted(_QUEUE_OPTIONS))}"
        )
    mrc = int(kwargs.get("max_receive_count") or DEFAULT_MAX_RECEIVE_COUNT)
    timeout = float(kwargs.get("visibility_timeout") or visibility_timeout)
    if mrc < 1 or timeout <= 0:
        raise ConfigurationError(
            f"NATS queue {queue!r}: max_receive_count must be at least 1 and "
            "visibility_timeout positive"
        )
    fifo = bool(kwargs.get("fifo", is_fifo(queue)))
    events = kwargs.get("filter_events") or ()
    if isinstance(events, str):
        events = (events,)
    return QueueOptions(
        max_receive_count=mrc,
        visibility_timeout=timeout,
        fifo=fifo,
        filter_events=tuple(str(e) for e in events),
        # One message of a FIFO queue out at a time: the next waits for the head's settling.
        max_ack_pending=1 if fifo else int(kwargs.get("max_ack_pending") or max_ack_pending),
    )


def consumer_config(options: QueueOptions, has_dead_letter_queue: bool) -> dict[str, Any]:
    """The durable pull consumer's settings (``ConsumerConfig`` fields).

    With a dead-letter queue, ``max_deliver`` is one more than ``max_receive_count``: the
    delivery past the count is the one the backend moves to the dead-letter queue instead of
    handing it out. Without one, a message is delivered until it is settled, as on SQS.
    """
    return {
        "durable_name": CONSUMER,
        "ack_policy": "explicit",
        "deliver_policy": "all",
        "ack_wait": options.visibility_timeout,
        "max_deliver": options.max_receive_count + 1 if has_dead_letter_queue else -1,
        "max_ack_pending": options.max_ack_pending,
        "max_waiting": 512,
    }


def source_filters(names: Names, topic: str, manifests: Sequence[str]) -> str:
    """The subject filter of a queue's source on ``topic``: the one manifest, or them all."""
    if len(manifests) == 1:
        return names.topic_subject(topic, manifests[0])
    return names.topic_subjects(topic)


def nats_capabilities(storage: str, max_payload: int) -> BackendCapabilities:
    """What the NATS backend can do, with ``storage`` and the server's ``max_payload``."""
    return BackendCapabilities(
        name="nats",
        persistent=storage == "file",
        fifo=True,
        topics=True,
        native_dead_letter=True,
        delayed_delivery=True,
        visibility_timeout=True,
        extend_visibility=True,
        receive_count=True,
        filter_policies=True,
        # Room for the headers.
        max_message_size=max_payload - 4096,
        max_batch_size=None,
    )


__all__ = [
    "CONSUMER",
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_MAX_ACK_PENDING",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_TOPIC_MAX_AGE",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "Names",
    "QueueOptions",
    "QueueSettings",
    "check_prefix",
    "consumer_config",
    "is_fifo",
    "nats_capabilities",
    "queue_options",
    "source_filters",
    "token",
    "untoken",
]
