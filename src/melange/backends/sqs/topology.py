"""Queues, topics and subscriptions of :class:`~melange.backends.sqs.backend.AWSBackend`.

:class:`Topology` creates, looks up and deletes SQS queues and SNS topics, and caches their
URLs and ARNs: queue attributes (:data:`QUEUE_ATTRIBUTE_OPTIONS`), the redrive policy naming a
queue's dead-letter queue, the queue access policy that lets topics send to it, SNS
subscriptions with their raw-delivery setting and filter policies. Queue URLs and topic ARNs
are handed out as :class:`QueueUrl` and :class:`TopicArn`.

What the requests carry is computed by pure functions (:func:`queue_attributes`,
:func:`redrive_policy`, :func:`allow_topics`, :func:`subscription_attributes`...), and each
operation of :class:`Topology` is written once as
:data:`~melange.backends.sqs.connection.Steps`: the blocking and the asyncio backends only
perform its requests on their own clients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from melange.backends.names import check_sns_topic_name, check_sqs_queue_name
from melange.backends.numbers import check_number
from melange.backends.sqs import wire
from melange.backends.sqs.connection import (
    QUEUE_EXISTS,
    QUEUE_MISSING,
    Call,
    ClientError,
    Steps,
    code,
    errors,
    text,
)
from melange.backends.sqs.wire import SQSReceipt, is_fifo
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.sqs")

#: Deliveries before SQS moves a message to the dead-letter queue, as in 7.2.0.
DEFAULT_MAX_RECEIVE_COUNT = 4

#: Friendly keyword arguments of :meth:`AWSBackend.declare_queue` and the SQS attribute each sets.
QUEUE_ATTRIBUTE_OPTIONS = {
    "visibility_timeout": "VisibilityTimeout",
    "message_retention_period": "MessageRetentionPeriod",
    "delay_seconds": "DelaySeconds",
    "receive_wait_time_seconds": "ReceiveMessageWaitTimeSeconds",
    "maximum_message_size": "MaximumMessageSize",
    "content_based_deduplication": "ContentBasedDeduplication",
    "deduplication_scope": "DeduplicationScope",
    "fifo_throughput_limit": "FifoThroughputLimit",
    "kms_master_key_id": "KmsMasterKeyId",
    "kms_data_key_reuse_period_seconds": "KmsDataKeyReusePeriodSeconds",
    "sqs_managed_sse_enabled": "SqsManagedSseEnabled",
}
#: The ranges SQS allows for the numeric options (seconds, or bytes for the message size).
NUMERIC_RANGES = {
    "visibility_timeout": (0, 43_200),
    "message_retention_period": (60, 1_209_600),
    "delay_seconds": (0, 900),
    "receive_wait_time_seconds": (0, 20),
    "maximum_message_size": (1_024, 262_144),
    "kms_data_key_reuse_period_seconds": (60, 86_400),
}
_OTHER_QUEUE_OPTIONS = {"attributes", "filter_events", "max_receive_count", "raw_delivery", "fifo"}


class QueueUrl(str):
    """A queue's URL: the ``unwrapped_obj`` of an SQS :class:`QueueWrapper`.

    A plain string that also answers ``.url`` and ``.attributes``, as the boto3 queue
    objects of 7.2.0 did.
    """

    # No __slots__: a str subclass cannot have non-empty ones, and the attributes reader
    # is kept on the instance.
    _reader: Callable[[str], dict[str, str]] | None = None
    _attributes: dict[str, str] | None = None

    @property
    def url(self) -> str:
        """The queue URL."""
        return str(self)

    def bind_reader(self, reader: Callable[[str], dict[str, str]]) -> QueueUrl:
        """Read :attr:`attributes` with ``reader(url)`` (a blocking backend's request)."""
        self._reader = reader
        return self

    @property
    def attributes(self) -> dict[str, str]:
        """The queue's SQS attributes (``GetQueueAttributes`` of ``All``: ``FifoQueue``,
        ``RedrivePolicy``...), read on first use and then kept, as boto3's ``Queue``
        kept them; :meth:`reload` reads them again."""
        if self._attributes is None:
            self.reload()
        return dict(self._attributes or {})

    def reload(self) -> None:
        """Read the queue's attributes again (one request)."""
        if self._reader is None:
            raise BackendError(
                "this queue handle cannot read its attributes: only handles of the blocking "
                "AWSBackend (get_queue, declare_queue) do"
            )
        self._attributes = self._reader(str(self))


class TopicArn(str):
    """A topic's ARN: the ``unwrapped_obj`` of an SNS :class:`TopicWrapper`.

    A plain string that also answers ``.arn``, as the boto3 topic objects of 7.2.0 did.
    """

    __slots__ = ()

    @property
    def arn(self) -> str:
        """The topic ARN."""
        return str(self)


def _source_arn(statement: Mapping[str, Any]) -> str | None:
    """The topic ARN a policy statement lets send to the queue, if it is that kind."""
    condition = statement.get("Condition")
    if not isinstance(condition, Mapping):
        return None
    for operator in ("ArnEquals", "ArnLike", "StringEquals"):
        clause = condition.get(operator)
        if isinstance(clause, Mapping):
            value = clause.get("aws:SourceArn") or clause.get("aws:sourceArn")
            if isinstance(value, str):
                return value
    return None


def _attribute_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # SQS counts whole seconds (and bytes): round fractions up, never down to zero.
        return str(math.ceil(value))
    if isinstance(value, Mapping | list):
        return json.dumps(value)
    return str(value)


def queue_attributes(queue_name: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The SQS attributes a queue is declared with: FIFO ones for a ``.fifo`` name, raw
    ``attributes=`` and the friendly options of :data:`QUEUE_ATTRIBUTE_OPTIONS`."""
    attributes: dict[str, str] = {}
    if is_fifo(queue_name):
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    raw = options.get("attributes") or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"attributes must be a dict of SQS queue attributes, got {type(raw).__name__}"
        )
    attributes.update({str(k): _attribute_value(v) for k, v in raw.items()})
    for option, attribute in QUEUE_ATTRIBUTE_OPTIONS.items():
        if option in options and options[option] is not None:
            attributes[attribute] = _attribute_value(options[option])
    return attributes


def check_queue_options(
    queue_name: str,
    topics_to_bind: Sequence[TopicWrapper],
    dead_letter_queue_name: str | None,
    options: Mapping[str, Any],
) -> int:
    """Refuse a declaration SQS or SNS would not honour, before any request; returns the
    ``max_receive_count`` of the redrive policy."""
    check_sqs_queue_name(queue_name)
    if dead_letter_queue_name is not None:
        check_sqs_queue_name(dead_letter_queue_name, "dead-letter queue")
    unknown = set(options) - set(QUEUE_ATTRIBUTE_OPTIONS) - _OTHER_QUEUE_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {sorted(unknown)} for SQS queue {queue_name!r}; known: "
            f"{sorted(set(QUEUE_ATTRIBUTE_OPTIONS) | _OTHER_QUEUE_OPTIONS)}"
        )
    for option, (low, high) in NUMERIC_RANGES.items():
        if options.get(option) is not None:
            check_number(option, options[option], minimum=low, maximum=high)
    fifo = is_fifo(queue_name)
    if "fifo" in options and bool(options["fifo"]) != fifo:
        raise ConfigurationError(
            f"SQS decides FIFO by name: a FIFO queue's name ends with '.fifo', and "
            f"{queue_name!r} {'does not' if not fifo else 'does'}"
        )
    max_receive_count = int(
        check_number(
            "max_receive_count",
            options.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT),
            minimum=1,
            maximum=1000,
            integer=True,
        )
    )
    if "max_receive_count" in options and dead_letter_queue_name is None:
        raise ConfigurationError(
            f"max_receive_count applies only to a queue with a dead-letter queue; pass "
            f"dead_letter_queue_name=... for {queue_name!r} or drop max_receive_count"
        )
    for topic in topics_to_bind:
        if fifo and not is_fifo(topic.name):
            raise ConfigurationError(
                f"FIFO queue {queue_name!r} cannot subscribe to standard topic "
                f"{topic.name!r}: SNS delivers to FIFO queues only from FIFO topics"
            )
    if dead_letter_queue_name is not None and is_fifo(dead_letter_queue_name) != fifo:
        raise ConfigurationError(
            f"queue {queue_name!r} and its dead-letter queue {dead_letter_queue_name!r} "
            "must both be FIFO (names ending '.fifo') or both standard"
        )
    return max_receive_count


def redrive_policy(dead_letter_arn: str, max_receive_count: int) -> str:
    """The ``RedrivePolicy`` attribute naming a queue's dead-letter queue."""
    return json.dumps(
        {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receive_count}
    )


def dead_letter_target(redrive: str | None) -> tuple[str, str | None] | None:
    """The (queue name, owner account) of the dead-letter queue a ``RedrivePolicy`` names."""
    if not redrive:
        return None
    arn = str(json.loads(redrive).get("deadLetterTargetArn", ""))
    parts = arn.split(":")
    if len(parts) < 6:
        return None
    return parts[5], parts[4] or None


def subscription_attributes(options: Mapping[str, Any]) -> dict[str, str]:
    """The attributes of a queue's SNS subscriptions: raw delivery and the filter policy of
    ``filter_events``."""
    attributes: dict[str, str] = {
        "RawMessageDelivery": "true" if options.get("raw_delivery") else "false"
    }
    filter_events = options.get("filter_events")
    if filter_events:
        if isinstance(filter_events, str):
            filter_events = [filter_events]
        attributes["FilterPolicy"] = json.dumps(
            {wire.MANIFEST_ATTRIBUTE: sorted({str(m) for m in filter_events})}
        )
    return attributes


def filter_policy_set(policy: str | None) -> bool:
    """Whether a subscription's ``FilterPolicy`` attribute filters anything."""
    return bool(policy and policy.strip() not in ("", "{}"))


def parse_policy(text: str | None, action: str) -> dict[str, Any]:
    """A queue's access policy (``Policy`` attribute) as a dict with a ``Statement`` list."""
    try:
        policy: object = json.loads(text) if text else {}
    except ValueError as exc:
        raise BackendError(f"{action}: the current policy is not valid JSON") from exc
    if not isinstance(policy, dict):
        raise BackendError(f"{action}: the current policy is not a JSON object")
    statements = policy.get("Statement", [])
    policy["Statement"] = [statements] if isinstance(statements, dict) else list(statements)
    policy.setdefault("Version", "2012-10-17")
    return policy


def allow_topics(policy: dict[str, Any], queue_arn: str, topic_arns: Sequence[str]) -> bool:
    """Add to ``policy`` a statement letting each topic send to the queue, unless one already
    does; keep every other statement. Returns whether anything was added."""
    statements = policy["Statement"]
    allowed = {
        _source_arn(s) for s in statements if isinstance(s, dict) and s.get("Effect") == "Allow"
    }
    missing = [arn for arn in topic_arns if arn not in allowed]
    for topic_arn in missing:
        statements.append(
            {
                # Alphanumeric and unique per topic ARN.
                "Sid": "MelangeSns" + hashlib.sha256(topic_arn.encode()).hexdigest()[:20],
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        )
    return bool(missing)


def _pages(service: str, operation: str, **params: Any) -> Steps[list[Any]]:
    """Every page of a listing (``NextToken`` pagination)."""
    pages: list[Any] = []
    token: str | None = None
    while True:
        request = {**params, "NextToken": token} if token else dict(params)
        page = yield Call(service, operation, request)
        pages.append(page)
        token = page.get("NextToken")
        if not token:
            return pages


class Topology:
    """The queues and topics of one backend, with their URLs and ARNs cached (thread-safe).

    It performs no I/O: each operation is :data:`~melange.backends.sqs.connection.Steps`
    that the blocking and the asyncio backends run on their own clients.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue_urls: dict[str, str] = {}
        self._topic_arns: dict[str, str] = {}
        # Queue URL -> its dead-letter queue URL, or None when it has none.
        self._dead_letter_urls: dict[str, str | None] = {}

    def forget_queue(self, queue_name: str) -> None:
        """Drop the cached URL of a queue that no longer exists."""
        with self._lock:
            self._queue_urls.pop(queue_name, None)

    def forget_topic(self, topic_name: str) -> None:
        """Drop the cached ARN of a topic that no longer exists."""
        with self._lock:
            self._topic_arns.pop(topic_name, None)

    # -- topics -----------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> Steps[TopicWrapper]:
        """Create the SNS topic if needed (a ``.fifo`` name makes a FIFO topic with
        content-based deduplication) and return it; its ARN is cached."""
        check_sns_topic_name(topic_name)
        attributes: dict[str, str] = {}
        if is_fifo(topic_name):
            attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "true"}
        with errors(f"creating topic {topic_name!r}"):
            response = yield Call(
                "sns", "create_topic", {"Name": topic_name, "Attributes": attributes}
            )
        arn = str(response["TopicArn"])
        with self._lock:
            self._topic_arns[topic_name] = arn
        return TopicWrapper(TopicArn(arn), topic_name)

    def get_topic(self, topic_name: str) -> Steps[TopicWrapper]:
        """The existing topic (its ARN looked up once, then cached); never creates it.

        Raises :class:`~melange.exceptions.TopicNotFoundError` when it does not exist.
        """
        with self._lock:
            arn = self._topic_arns.get(topic_name)
        if arn is None:
            arn = yield from self._find_topic_arn(topic_name)
        if arn is None:
            raise TopicNotFoundError(topic_name)
        return TopicWrapper(TopicArn(arn), topic_name)

    def _find_topic_arn(self, topic_name: str) -> Steps[str | None]:
        found: dict[str, str] = {}
        with errors(f"looking up topic {topic_name!r}"):
            pages = yield from _pages("sns", "list_topics")
        for page in pages:
            for topic in page.get("Topics", []):
                arn = topic.get("TopicArn", "")
                found[arn.rsplit(":", 1)[-1]] = arn
        with self._lock:
            self._topic_arns.update(found)
        return found.get(topic_name)

    def delete_topic(self, topic: TopicWrapper) -> Steps[None]:
        """Delete the topic and its subscriptions (a missing topic is not an error)."""
        arn = yield from self.topic_arn(topic)
        with errors(f"deleting topic {topic.name!r}"):
            yield Call("sns", "delete_topic", {"TopicArn": arn})
        with self._lock:
            self._topic_arns.pop(topic.name, None)

    def topic_arn(self, topic: TopicWrapper) -> Steps[str]:
        """The ARN of ``topic`` (looked up when the wrapper does not carry it)."""
        arn = topic.unwrapped_obj
        if isinstance(arn, str) and arn.startswith("arn:"):
            return arn
        found = yield from self.get_topic(topic.name)
        return str(found.unwrapped_obj)

    # -- queues -----------------------------------------------------------------------------

    def get_queue(self, queue_name: str) -> Steps[QueueWrapper]:
        """The existing queue (its URL looked up once, then cached); never creates it.

        Raises :class:`~melange.exceptions.QueueNotFoundError` only when SQS says the queue
        does not exist; other failures (permissions, network) raise ``BackendError``.
        """
        with self._lock:
            url = self._queue_urls.get(queue_name)
        if url is None:
            url = yield from self.lookup_queue_url(queue_name)
        return QueueWrapper(QueueUrl(url), queue_name)

    def lookup_queue_url(self, queue_name: str, owner: str | None = None) -> Steps[str]:
        """Ask SQS for a queue's URL (and cache it)."""
        params: dict[str, Any] = {"QueueName": queue_name}
        if owner:
            params["QueueOwnerAWSAccountId"] = owner
        with errors(f"looking up queue {queue_name!r}"):
            try:
                response = yield Call("sqs", "get_queue_url", params)
            except ClientError as exc:
                if code(exc) in QUEUE_MISSING:
                    raise QueueNotFoundError(queue_name) from exc
                raise
        url = str(response["QueueUrl"])
        with self._lock:
            self._queue_urls[queue_name] = url
        return url

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> Steps[tuple[QueueWrapper, QueueWrapper | None]]:
        """Create or update the queue, its dead-letter queue and its subscriptions (see
        :meth:`melange.backends.sqs.backend.AWSBackend.declare_queue` for the options)."""
        max_receive_count = check_queue_options(
            queue_name, topics_to_bind, dead_letter_queue_name, kwargs
        )
        fifo = is_fifo(queue_name)
        attributes = queue_attributes(queue_name, kwargs)
        dead_letter: QueueWrapper | None = None
        if dead_letter_queue_name is not None:
            # Content-based deduplication as on the queue (7.2.0 made both so): a copy sent
            # without a deduplication id is accepted, and ours carry one anyway.
            dlq_attributes = (
                {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
            )
            dlq_url = yield from self._create_queue(dead_letter_queue_name, dlq_attributes)
            dlq_arn = yield from self._queue_arn(dlq_url, dead_letter_queue_name)
            attributes["RedrivePolicy"] = redrive_policy(dlq_arn, max_receive_count)
            dead_letter = QueueWrapper(QueueUrl(dlq_url), dead_letter_queue_name)
        url = yield from self._create_queue(queue_name, attributes)
        with self._lock:
            if dead_letter is not None:
                self._dead_letter_urls[url] = dead_letter.unwrapped_obj
            else:
                # The redrive policy may have been set elsewhere: read it again when needed.
                self._dead_letter_urls.pop(url, None)
        if topics_to_bind:
            queue_arn = yield from self._queue_arn(url, queue_name)
            yield from self._allow_topics(url, queue_name, queue_arn, topics_to_bind)
            subscription = subscription_attributes(kwargs)
            for topic in topics_to_bind:
                yield from self._subscribe(topic, queue_arn, subscription)
        return QueueWrapper(QueueUrl(url), queue_name), dead_letter

    def _create_queue(self, queue_name: str, attributes: dict[str, str]) -> Steps[str]:
        action = f"creating queue {queue_name!r}"
        with errors(action):
            try:
                created = yield Call(
                    "sqs", "create_queue", {"QueueName": queue_name, "Attributes": attributes}
                )
                url: str = created["QueueUrl"]
            except ClientError as exc:
                if code(exc) not in QUEUE_EXISTS:
                    raise
                # It exists with other attributes: keep it (and its messages), update them.
                found = yield Call("sqs", "get_queue_url", {"QueueName": queue_name})
                url = found["QueueUrl"]
                changeable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
                if changeable:
                    yield Call(
                        "sqs", "set_queue_attributes", {"QueueUrl": url, "Attributes": changeable}
                    )
        with self._lock:
            self._queue_urls[queue_name] = url
        return url

    def _queue_arn(self, url: str, queue_name: str) -> Steps[str]:
        with errors(f"reading the ARN of queue {queue_name!r}"):
            response = yield Call(
                "sqs", "get_queue_attributes", {"QueueUrl": url, "AttributeNames": ["QueueArn"]}
            )
        return str(response["Attributes"]["QueueArn"])

    def _allow_topics(
        self, url: str, queue_name: str, queue_arn: str, topics: Sequence[TopicWrapper]
    ) -> Steps[None]:
        """Add a statement letting each topic send to the queue; keep every other statement.

        SQS has no conditional update, so after writing, the policy is read again to check
        that a concurrent declaration did not overwrite the new statements (up to 3 tries).
        """
        action = f"updating the access policy of queue {queue_name!r}"
        topic_arns = []
        for topic in topics:
            topic_arns.append((yield from self.topic_arn(topic)))
        for _ in range(3):
            with errors(action):
                current = yield Call(
                    "sqs", "get_queue_attributes", {"QueueUrl": url, "AttributeNames": ["Policy"]}
                )
            policy = parse_policy(current.get("Attributes", {}).get("Policy"), action)
            if not allow_topics(policy, queue_arn, topic_arns):
                return
            with errors(action):
                yield Call(
                    "sqs",
                    "set_queue_attributes",
                    {"QueueUrl": url, "Attributes": {"Policy": json.dumps(policy)}},
                )
        raise BackendError(
            f"{action} failed: the policy kept changing under concurrent updates; declare again"
        )

    def _subscribe(
        self, topic: TopicWrapper, queue_arn: str, attributes: dict[str, str]
    ) -> Steps[None]:
        topic_arn = yield from self.topic_arn(topic)
        action = f"subscribing {queue_arn.rsplit(':', 1)[-1]!r} to topic {topic.name!r}"
        with errors(action):
            try:
                response = yield Call(
                    "sns",
                    "subscribe",
                    {
                        "TopicArn": topic_arn,
                        "Protocol": "sqs",
                        "Endpoint": queue_arn,
                        "Attributes": attributes,
                        "ReturnSubscriptionArn": True,
                    },
                )
                arns = [str(response["SubscriptionArn"])]
                stale = False
            except ClientError as exc:
                if "already exists" not in text(exc):
                    raise
                pages = yield from _pages("sns", "list_subscriptions_by_topic", TopicArn=topic_arn)
                arns = [
                    str(subscription["SubscriptionArn"])
                    for page in pages
                    for subscription in page.get("Subscriptions", [])
                    if subscription.get("Endpoint") == queue_arn
                ]
                stale = True
            for arn in arns:
                if stale:
                    # It exists with other attributes: bring it to the declared ones.
                    for name, value in attributes.items():
                        yield Call(
                            "sns",
                            "set_subscription_attributes",
                            {
                                "SubscriptionArn": arn,
                                "AttributeName": name,
                                "AttributeValue": value,
                            },
                        )
                if "FilterPolicy" not in attributes:
                    # Declared without filter_events: let every message through again.
                    current = yield Call(
                        "sns", "get_subscription_attributes", {"SubscriptionArn": arn}
                    )
                    if filter_policy_set(current.get("Attributes", {}).get("FilterPolicy")):
                        yield Call(
                            "sns",
                            "set_subscription_attributes",
                            {
                                "SubscriptionArn": arn,
                                "AttributeName": "FilterPolicy",
                                "AttributeValue": "{}",
                            },
                        )

    def delete_queue(self, queue: QueueWrapper) -> Steps[None]:
        """Delete the queue and its messages, and unsubscribe it from its topics (a missing
        queue is not an error)."""
        url = yield from self.url(queue)
        yield from self._unsubscribe_queue(url, queue.name)
        with errors(f"deleting queue {queue.name!r}"):
            try:
                yield Call("sqs", "delete_queue", {"QueueUrl": url})
            except ClientError as exc:
                if code(exc) not in QUEUE_MISSING:
                    raise
        with self._lock:
            self._queue_urls.pop(queue.name, None)
            self._dead_letter_urls.pop(url, None)

    def _unsubscribe_queue(self, url: str, queue_name: str) -> Steps[None]:
        # SNS keeps subscriptions of a deleted queue and keeps trying to deliver to it (some
        # SNS-compatible servers even refuse publishes then): remove them with the queue.
        try:
            arn = yield from self._queue_arn(url, queue_name)
            pages = yield from _pages("sns", "list_subscriptions")
            for page in pages:
                for subscription in page.get("Subscriptions", []):
                    if (
                        subscription.get("Protocol") == "sqs"
                        and subscription.get("Endpoint") == arn
                    ):
                        yield Call(
                            "sns",
                            "unsubscribe",
                            {"SubscriptionArn": subscription["SubscriptionArn"]},
                        )
        except Exception as exc:
            logger.warning(
                "could not remove the topic subscriptions of queue %r before deleting it: %s",
                queue_name,
                exc,
            )

    def url(self, queue: QueueWrapper) -> Steps[str]:
        """The URL of ``queue`` (looked up when the wrapper does not carry it)."""
        url = queue.unwrapped_obj
        if isinstance(url, str) and "://" in url:
            return url
        found = yield from self.get_queue(queue.name)
        return str(found.unwrapped_obj)

    def dead_letter_url(self, receipt: SQSReceipt) -> Steps[str | None]:
        """The URL of the dead-letter queue of the queue a message came from, or ``None``."""
        with self._lock:
            if receipt.queue_url in self._dead_letter_urls:
                return self._dead_letter_urls[receipt.queue_url]
        with errors(f"reading the redrive policy of queue {receipt.queue_name!r}"):
            response = yield Call(
                "sqs",
                "get_queue_attributes",
                {"QueueUrl": receipt.queue_url, "AttributeNames": ["RedrivePolicy"]},
            )
        target = dead_letter_target(response.get("Attributes", {}).get("RedrivePolicy"))
        url: str | None = None
        if target is not None:
            url = yield from self.lookup_queue_url(*target)
        with self._lock:
            self._dead_letter_urls[receipt.queue_url] = url
        return url


__all__ = [
    "DEFAULT_MAX_RECEIVE_COUNT",
    "QUEUE_ATTRIBUTE_OPTIONS",
    "QueueUrl",
    "TopicArn",
    "Topology",
    "allow_topics",
    "check_queue_options",
    "dead_letter_target",
    "filter_policy_set",
    "parse_policy",
    "queue_attributes",
    "redrive_policy",
    "subscription_attributes",
]
