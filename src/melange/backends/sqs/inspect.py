"""Looking into SQS queues from outside their consumers (``melange queues``, ``melange dlq``):
the :class:`~melange.backends.inspection.Inspectable` contract on SQS and SNS.

- Counts are the queue's attributes ``ApproximateNumberOfMessages`` (ready),
  ``ApproximateNumberOfMessagesNotVisible`` (in flight) and
  ``ApproximateNumberOfMessagesDelayed`` (delayed): SQS keeps them eventually consistent,
  so they lag a publish or a receive by up to a minute.
- A peek receives messages and makes them visible again at once: SQS has no other way to
  read a message. Each peek counts as a receive (``ApproximateReceiveCount``), which a
  queue's ``RedrivePolicy`` counts towards its ``maxReceiveCount``: peeking such a queue is
  refused, so that looking at a queue can never dead-letter its messages. Dead-letter queues
  have no redrive policy of their own and can be peeked at.
- A purge is ``PurgeQueue``: SQS deletes the messages within a minute and accepts one purge
  per queue a minute.
- The queues that dead-letter into a queue are those ``ListDeadLetterSourceQueues`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from melange.backends.inspection import QueueStats
from melange.backends.sqs.connection import QUEUE_MISSING, Call, ClientError, Steps, code, errors
from melange.backends.sqs.topology import Topology
from melange.backends.sqs.wire import MAX_BATCH_ENTRIES, to_message
from melange.exceptions import ConfigurationError, QueueNotFoundError
from melange.models import Message, QueueWrapper

_T = TypeVar("_T")

#: Seconds peeked messages stay hidden while a peek collects them (made visible at the end).
PEEK_HOLD_SECONDS = 30

_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def name_of_url(url: str) -> str:
    """The queue name at the end of a queue URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def name_of_arn(arn: str) -> str:
    """The resource name at the end of an ARN."""
    return arn.rsplit(":", 1)[-1]


def _if_missing(exc: ClientError, queue_name: str, topology: Topology) -> None:
    """Raise :class:`QueueNotFoundError` when ``exc`` says the queue does not exist."""
    if code(exc) in QUEUE_MISSING:
        topology.forget_queue(queue_name)
        raise QueueNotFoundError(queue_name) from exc


def queue_names_steps() -> Steps[list[str]]:
    """Every queue's name (``ListQueues``, page by page)."""
    names: list[str] = []
    params: dict[str, Any] = {"MaxResults": 1000}
    with errors("listing the queues"):
        while True:
            answer = yield Call("sqs", "list_queues", dict(params))
            names.extend(name_of_url(url) for url in answer.get("QueueUrls", []))
            token = answer.get("NextToken")
            if not token:
                break
            params["NextToken"] = token
    return sorted(names)


def topic_names_steps() -> Steps[list[str]]:
    """Every SNS topic's name (``ListTopics``, page by page)."""
    names: list[str] = []
    params: dict[str, Any] = {}
    with errors("listing the topics"):
        while True:
            answer = yield Call("sns", "list_topics", dict(params))
            names.extend(name_of_arn(t["TopicArn"]) for t in answer.get("Topics", []))
            token = answer.get("NextToken")
            if not token:
                break
            params["NextToken"] = token
    return sorted(names)


def _url(topology: Topology, queue_name: str) -> Steps[str]:
    return (yield from topology.url(QueueWrapper(None, queue_name)))


def _attributes(topology: Topology, queue_name: str, names: list[str]) -> Steps[dict[str, str]]:
    url = yield from _url(topology, queue_name)
    with errors(f"reading the attributes of queue {queue_name!r}"):
        try:
            answer = yield Call(
                "sqs", "get_queue_attributes", {"QueueUrl": url, "AttributeNames": names}
            )
        except ClientError as exc:
            _if_missing(exc, queue_name, topology)
            raise
    return dict(answer.get("Attributes", {}))


def queue_stats_steps(topology: Topology, queue_name: str) -> Steps[QueueStats]:
    """The approximate counts of the queue's attributes."""
    found = yield from _attributes(topology, queue_name, list(_COUNTS))
    ready, in_flight, delayed = (int(found.get(name, 0)) for name in _COUNTS)
    return QueueStats(queue_name, ready, in_flight, delayed)


def peek_steps(topology: Topology, queue_name: str, limit: int) -> Steps[list[Message]]:
    """Copies of up to ``limit`` messages, oldest first (by the time SQS got them); the
    messages are visible again when this returns."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    found = yield from _attributes(topology, queue_name, ["RedrivePolicy"])
    if found.get("RedrivePolicy"):
        raise ConfigurationError(
            f"queue {queue_name!r} has a RedrivePolicy: a peek is a receive on SQS and would "
            "count towards its maxReceiveCount, so its messages are not peeked at (peek at its "
            "dead-letter queue, or look with `melange queues stats`)"
        )
    url = yield from _url(topology, queue_name)
    held: list[tuple[int, str, Message]] = []
    try:
        while len(held) < limit:
            request = {
                "QueueUrl": url,
                "MaxNumberOfMessages": min(MAX_BATCH_ENTRIES, limit - len(held)),
                "WaitTimeSeconds": 1,
                "VisibilityTimeout": PEEK_HOLD_SECONDS,
                "MessageAttributeNames": ["All"],
                "MessageSystemAttributeNames": ["All"],
                "AttributeNames": ["All"],
            }
            with errors(f"peeking at queue {queue_name!r}"):
                try:
                    answer = yield Call("sqs", "receive_message", request)
                except ClientError as exc:
                    _if_missing(exc, queue_name, topology)
                    raise
            batch = answer.get("Messages", [])
            if not batch:
                break
            for raw in batch:
                sent = int((raw.get("Attributes") or {}).get("SentTimestamp", 0))
                held.append((sent, raw["ReceiptHandle"], to_message(raw, url, queue_name)))
    finally:
        # Visible again at once, whatever happened: a peek never keeps a message hidden.
        handles = [handle for _, handle, _ in held]
        for start in range(0, len(handles), MAX_BATCH_ENTRIES):
            chunk = handles[start : start + MAX_BATCH_ENTRIES]
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, handle in enumerate(chunk)
            ]
            with errors(f"giving back the messages peeked at in queue {queue_name!r}"):
                yield Call(
                    "sqs", "change_message_visibility_batch", {"QueueUrl": url, "Entries": entries}
                )
    held.sort(key=lambda item: item[0])
    copies = []
    for _, _, message in held:
        message.metadata = None
        # The receive count includes this peek's own receive.
        message.attempt = max(0, (message.attempt or 1) - 1) or None
        copies.append(message)
    return copies


def purge_steps(topology: Topology, queue_name: str) -> Steps[int]:
    """``PurgeQueue``; returns how many messages the queue held just before."""
    stats = yield from queue_stats_steps(topology, queue_name)
    url = yield from _url(topology, queue_name)
    with errors(f"purging queue {queue_name!r}"):
        try:
            yield Call("sqs", "purge_queue", {"QueueUrl": url})
        except ClientError as exc:
            _if_missing(exc, queue_name, topology)
            raise
    return stats.total


def dead_letter_sources_steps(topology: Topology, queue_name: str) -> Steps[list[str]]:
    """The queues whose ``RedrivePolicy`` names ``queue_name`` (``ListDeadLetterSourceQueues``)."""
    url = yield from _url(topology, queue_name)
    names: list[str] = []
    params: dict[str, Any] = {"QueueUrl": url, "MaxResults": 1000}
    with errors(f"listing the queues that dead-letter into {queue_name!r}"):
        while True:
            try:
                answer = yield Call("sqs", "list_dead_letter_source_queues", dict(params))
            except ClientError as exc:
                _if_missing(exc, queue_name, topology)
                raise
            names.extend(name_of_url(u) for u in answer.get("queueUrls", []))
            token = answer.get("NextToken")
            if not token:
                break
            params["NextToken"] = token
    return sorted(names)


class SQSInspection:
    """The inspection methods of the blocking SQS backend (a mixin of
    :class:`~melange.backends.sqs.backend.AWSBackend`)."""

    _topology: Topology
    _run: Callable[[Steps[Any]], Any]

    def queue_names(self) -> list[str]:
        """Every queue's name, sorted."""
        names: list[str] = self._run(queue_names_steps())
        return names

    def topic_names(self) -> list[str]:
        """Every SNS topic's name, sorted."""
        names: list[str] = self._run(topic_names_steps())
        return names

    def queue_stats(self, queue_name: str) -> QueueStats:
        """The queue's approximate counts: ready, in flight (not visible) and delayed."""
        stats: QueueStats = self._run(queue_stats_steps(self._topology, queue_name))
        return stats

    def queue_depth(self, queue_name: str) -> int:
        """Messages in the queue, in flight or not (approximate)."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Copies of up to ``limit`` messages, oldest first; refused on a queue with a
        ``RedrivePolicy`` (see :mod:`melange.backends.sqs.inspect`)."""
        copies: list[Message] = self._run(peek_steps(self._topology, queue_name, limit))
        return copies

    def purge(self, queue_name: str) -> int:
        """Purge the queue; returns how many messages it held (approximate)."""
        held: int = self._run(purge_steps(self._topology, queue_name))
        return held

    def dead_letter_sources(self, queue_name: str) -> list[str]:
        """The queues that dead-letter into ``queue_name``, sorted."""
        names: list[str] = self._run(dead_letter_sources_steps(self._topology, queue_name))
        return names


__all__ = [
    "SQSInspection",
    "dead_letter_sources_steps",
    "peek_steps",
    "purge_steps",
    "queue_names_steps",
    "queue_stats_steps",
    "topic_names_steps",
]
