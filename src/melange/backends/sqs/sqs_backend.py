"""Amazon SQS and SNS as a Melange backend (needs the ``aws`` extra: boto3).

Queues are SQS queues, topics are SNS topics, and a queue is bound to a topic by an SNS
subscription. The wire format is the one Melange 7.2.0 used, so old and new services can
share queues and topics; see :mod:`melange.backends.sqs.wire`.

Costs: once a queue URL or topic ARN is known (they are cached), publishing one message is
one HTTP request, a batch is one request per ten messages, and consuming a full queue takes
one receive and one batched delete per ten messages.

Stopping: :meth:`AWSBackend.interrupt` cannot cut an SQS long poll short, so a dispatcher
being stopped returns after at most one long poll (``wait_time_seconds``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the SQS/SNS backends need boto3 ({exc}): pip install 'melange[aws]'"
    ) from exc

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.sqs import wire
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import FAILURE_REASON, Message, QueueWrapper, TopicWrapper

if TYPE_CHECKING:
    from mypy_boto3_sns.client import SNSClient
    from mypy_boto3_sqs.client import SQSClient

logger = logging.getLogger("melange.backends.sqs")

_T = TypeVar("_T")

#: The longest visibility timeout SQS accepts (12 hours).
MAX_VISIBILITY_TIMEOUT = 43_200
#: The longest long poll SQS accepts.
MAX_WAIT_SECONDS = 20
#: Deliveries before SQS moves a message to the dead-letter queue, as in 7.2.0.
DEFAULT_MAX_RECEIVE_COUNT = 4

_QUEUE_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_QUEUE_EXISTS = {"QueueAlreadyExists", "QueueNameExists"}
_TOPIC_MISSING = {"NotFound", "NotFoundException"}
# A receipt handle that expired or was already used: settling it late is a no-op.
_STALE_RECEIPT = {
    "ReceiptHandleIsInvalid",
    "InvalidParameterValue",
    "AWS.SimpleQueueService.MessageNotInflight",
    "MessageNotInflight",
}
_NETWORK_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.HTTPClientError,
)

_SYSTEM_ATTRIBUTES = ("ApproximateReceiveCount", "MessageGroupId", "MessageDeduplicationId")

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
_OTHER_QUEUE_OPTIONS = {"attributes", "filter_events", "max_receive_count", "raw_delivery", "fifo"}


@dataclass(frozen=True)
class SQSReceipt:
    """What a received message needs to be settled; kept in :attr:`Message.metadata`.

    The original body and message attributes are kept so a dead-lettered copy is the
    message exactly as it arrived.
    """

    queue_url: str
    queue_name: str
    receipt_handle: str
    sqs_message_id: str
    body: str
    attributes: Mapping[str, wire.AttributeValue]


class QueueUrl(str):
    """A queue's URL: the ``unwrapped_obj`` of an SQS :class:`QueueWrapper`.

    A plain string that also answers ``.url``, as the boto3 queue objects of 7.2.0 did.
    """

    __slots__ = ()

    @property
    def url(self) -> str:
        """The queue URL."""
        return str(self)


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


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _text(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()


def _attribute_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # SQS counts whole seconds (and bytes): round fractions up, never down to zero.
        return str(math.ceil(value))
    if isinstance(value, Mapping | list):
        return json.dumps(value)
    return str(value)


def _with_fifo_fields(entry: dict[str, Any], name: str, message: Message) -> dict[str, Any]:
    """Add the group and deduplication ids a FIFO queue or topic needs to a request entry."""
    if _is_fifo(name):
        entry["MessageGroupId"] = message.group_id
        if message.deduplication_id:
            entry["MessageDeduplicationId"] = message.deduplication_id
    return entry


def _is_fifo(name: str) -> bool:
    return name.endswith(".fifo")


def _chunks(
    items: Sequence[tuple[int, Message, _T]], size_of: Callable[[_T], int]
) -> Iterator[list[tuple[int, Message, _T]]]:
    """Groups of at most ten entries whose payloads add up to at most the size limit."""
    chunk: list[tuple[int, Message, _T]] = []
    total = 0
    for item in items:
        size = size_of(item[2])
        if chunk and (len(chunk) == wire.MAX_BATCH_ENTRIES or total + size > wire.MAX_MESSAGE_SIZE):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


class AWSBackend(MessagingBackend):
    """Amazon SQS queues and SNS topics.

    Region and credentials are found the way boto3 finds them (environment, shared config,
    instance role...) unless given here.

    Args:
        max_number_of_messages: Messages one receive asks for (1-10), as in 7.2.0.
        visibility_timeout: Seconds a received message stays hidden from other consumers; it is
            requested on every receive (as in 7.2.0) and is what a dispatcher's heartbeat
            extends while a handler runs. ``None`` uses each queue's own setting (and turns the
            heartbeat off). SQS counts whole seconds: fractions are rounded up.
        wait_time_seconds: Long-poll duration of a receive (0-20), as in 7.2.0.
        region_name: AWS region; default: boto3's resolution.
        endpoint_url: SQS endpoint (for SQS-compatible brokers or VPC endpoints).
        sns_endpoint_url: SNS endpoint; defaults to ``endpoint_url``.
        session: A ``boto3.Session`` to build the clients from.
        config: A ``botocore.config.Config`` for both clients.
        aws_access_key_id: Explicit credentials (default: boto3's resolution).
        aws_secret_access_key: Explicit credentials.
        aws_session_token: Explicit credentials.
    """

    def __init__(
        self,
        max_number_of_messages: int = 10,
        visibility_timeout: float | None = 100,
        wait_time_seconds: int = 10,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        sns_endpoint_url: str | None = None,
        session: boto3.Session | None = None,
        config: botocore.config.Config | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
    ) -> None:
        if not 1 <= int(max_number_of_messages) <= wire.MAX_BATCH_ENTRIES:
            raise ConfigurationError(
                f"max_number_of_messages must be between 1 and 10, got {max_number_of_messages}"
            )
        if not 0 <= int(wait_time_seconds) <= MAX_WAIT_SECONDS:
            raise ConfigurationError(
                f"wait_time_seconds must be between 0 and 20, got {wait_time_seconds}"
            )
        if visibility_timeout is not None:
            # Whole seconds on SQS: a fraction rounds up, so 0.5 never means "at once".
            visibility_timeout = math.ceil(visibility_timeout)
        if visibility_timeout is not None and not (
            0 <= visibility_timeout <= MAX_VISIBILITY_TIMEOUT
        ):
            raise ConfigurationError(
                f"visibility_timeout must be between 0 and 43200 seconds, got {visibility_timeout}"
            )
        self.max_number_of_messages = int(max_number_of_messages)
        #: Seconds a received message stays hidden (read by the dispatcher's heartbeat).
        self.visibility_timeout: int | None = (
            None if visibility_timeout is None else int(visibility_timeout)
        )
        self.wait_time_seconds = int(wait_time_seconds)
        session = session or boto3.Session()
        # boto3 reads AWS_DEFAULT_REGION; AWS_REGION (the name AWS's own runtimes set) is
        # accepted too.
        region_name = region_name or session.region_name or os.environ.get("AWS_REGION")
        # The read timeout must outlast a long poll; retries stay boto3's standard ones.
        base = botocore.config.Config(
            read_timeout=max(60, MAX_WAIT_SECONDS + 10), retries={"mode": "standard"}
        )
        merged = base.merge(config) if config is not None else base
        credentials: dict[str, Any] = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        try:
            self._sqs: Any = session.client(
                "sqs",
                region_name=region_name,
                endpoint_url=endpoint_url,
                config=merged,
                **credentials,
            )
            self._sns: Any = session.client(
                "sns",
                region_name=region_name,
                endpoint_url=sns_endpoint_url or endpoint_url,
                config=merged,
                **credentials,
            )
        except botocore.exceptions.NoRegionError as exc:
            raise ConfigurationError(
                "no AWS region configured: pass region_name=... or set AWS_REGION "
                "(or AWS_DEFAULT_REGION)"
            ) from exc
        self._lock = threading.Lock()
        self._queue_urls: dict[str, str] = {}
        self._topic_arns: dict[str, str] = {}
        # Queue URL -> its dead-letter queue URL, or None when it has none.
        self._dead_letter_urls: dict[str, str | None] = {}

    # -- clients and errors -----------------------------------------------------------------

    @property
    def sqs_client(self) -> SQSClient:
        """The boto3 SQS client (for inspection and request counting)."""
        return cast("SQSClient", self._sqs)

    @property
    def sns_client(self) -> SNSClient:
        """The boto3 SNS client (for inspection and request counting)."""
        return cast("SNSClient", self._sns)

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            name="sqs",
            persistent=True,
            fifo=True,
            topics=True,
            native_dead_letter=True,
            delayed_delivery=True,
            visibility_timeout=True,
            extend_visibility=True,
            receive_count=True,
            filter_policies=True,
            max_message_size=wire.MAX_MESSAGE_SIZE,
            max_batch_size=wire.MAX_BATCH_ENTRIES,
        )

    @contextmanager
    def _errors(self, action: str, error: type[Exception] = BackendError) -> Iterator[None]:
        """Turn botocore failures into Melange errors that say what was being done."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise error(f"{action} failed: {_text(exc)}") from exc
        except _NETWORK_ERRORS as exc:
            raise BackendConnectionError(f"{action} failed: cannot reach AWS: {exc}") from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise BackendError(
                f"{action} failed: no AWS credentials found; configure them as boto3 expects "
                "or pass aws_access_key_id/aws_secret_access_key"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise BackendError(f"{action} failed: {exc}") from exc

    # -- topology: topics -------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the SNS topic if needed (a ``.fifo`` name makes a FIFO topic with
        content-based deduplication) and return it; its ARN is cached."""
        attributes: dict[str, str] = {}
        if _is_fifo(topic_name):
            attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "true"}
        with self._errors(f"creating topic {topic_name!r}"):
            response = self._sns.create_topic(Name=topic_name, Attributes=attributes)
        arn = str(response["TopicArn"])
        with self._lock:
            self._topic_arns[topic_name] = arn
        return TopicWrapper(TopicArn(arn), topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        """The existing topic (its ARN looked up once, then cached); never creates it.

        Raises :class:`~melange.exceptions.TopicNotFoundError` when it does not exist.
        """
        with self._lock:
            arn = self._topic_arns.get(topic_name)
        if arn is None:
            arn = self._find_topic_arn(topic_name)
        if arn is None:
            raise TopicNotFoundError(topic_name)
        return TopicWrapper(TopicArn(arn), topic_name)

    def _find_topic_arn(self, topic_name: str) -> str | None:
        found: dict[str, str] = {}
        with self._errors(f"looking up topic {topic_name!r}"):
            for page in self._sns.get_paginator("list_topics").paginate():
                for topic in page.get("Topics", []):
                    arn = topic.get("TopicArn", "")
                    found[arn.rsplit(":", 1)[-1]] = arn
        with self._lock:
            self._topic_arns.update(found)
        return found.get(topic_name)

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic and its subscriptions (a missing topic is not an error)."""
        with self._errors(f"deleting topic {topic.name!r}"):
            self._sns.delete_topic(TopicArn=self._topic_arn(topic))
        with self._lock:
            self._topic_arns.pop(topic.name, None)

    def _topic_arn(self, topic: TopicWrapper) -> str:
        arn = topic.unwrapped_obj
        if isinstance(arn, str) and arn.startswith("arn:"):
            return arn
        return self.get_topic(topic.name).unwrapped_obj  # type: ignore[no-any-return]

    # -- topology: queues -------------------------------------------------------------------

    def get_queue(self, queue_name: str) -> QueueWrapper:
        """The existing queue (its URL looked up once, then cached); never creates it.

        Raises :class:`~melange.exceptions.QueueNotFoundError` only when SQS says the queue
        does not exist; other failures (permissions, network) raise ``BackendError``.
        """
        with self._lock:
            url = self._queue_urls.get(queue_name)
        if url is None:
            url = self._lookup_queue_url(queue_name)
        return QueueWrapper(QueueUrl(url), queue_name)

    def _lookup_queue_url(self, queue_name: str, owner: str | None = None) -> str:
        with self._errors(f"looking up queue {queue_name!r}"):
            try:
                if owner:
                    response = self._sqs.get_queue_url(
                        QueueName=queue_name, QueueOwnerAWSAccountId=owner
                    )
                else:
                    response = self._sqs.get_queue_url(QueueName=queue_name)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _QUEUE_MISSING:
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
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or update the queue, its dead-letter queue and its subscriptions.

        Keyword arguments:
            filter_events: Manifests the subscriptions let through (an SNS filter policy
                ``{"manifest": [...]}``); without it, the subscriptions let every message
                through (an existing filter policy is cleared).
            raw_delivery: Subscribe with raw message delivery (the queue then receives the
                content itself instead of the SNS envelope). Default ``False``, as in 7.2.0.
            max_receive_count: Deliveries before SQS moves a message to the dead-letter queue
                (default 4).
            attributes: Raw SQS queue attributes, e.g. ``{"VisibilityTimeout": "30"}``.
            visibility_timeout, message_retention_period, delay_seconds, ...: friendly names of
                SQS attributes (see :data:`QUEUE_ATTRIBUTE_OPTIONS`); fractions of a second are
                rounded up, as SQS counts whole seconds.

        A ``.fifo`` name makes a FIFO queue with content-based deduplication; its dead-letter
        queue must be FIFO too, and it can only subscribe to FIFO topics. Existing queues keep
        their messages and get the given attributes. Subscribing adds one statement per topic
        to the queue's access policy and keeps every other statement.
        """
        unknown = set(kwargs) - set(QUEUE_ATTRIBUTE_OPTIONS) - _OTHER_QUEUE_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {sorted(unknown)} for SQS queue {queue_name!r}; known: "
                f"{sorted(set(QUEUE_ATTRIBUTE_OPTIONS) | _OTHER_QUEUE_OPTIONS)}"
            )
        fifo = _is_fifo(queue_name)
        if "fifo" in kwargs and bool(kwargs["fifo"]) != fifo:
            raise ConfigurationError(
                f"SQS decides FIFO by name: a FIFO queue's name ends with '.fifo', and "
                f"{queue_name!r} {'does not' if not fifo else 'does'}"
            )
        attributes = self._queue_attributes(queue_name, kwargs)
        max_receive_count = int(kwargs.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT))
        if not 1 <= max_receive_count <= 1000:
            raise ConfigurationError(
                f"max_receive_count must be between 1 and 1000, got {max_receive_count}"
            )
        if "max_receive_count" in kwargs and dead_letter_queue_name is None:
            raise ConfigurationError(
                f"max_receive_count applies only to a queue with a dead-letter queue; pass "
                f"dead_letter_queue_name=... for {queue_name!r} or drop max_receive_count"
            )
        for topic in topics_to_bind:
            if fifo and not _is_fifo(topic.name):
                raise ConfigurationError(
                    f"FIFO queue {queue_name!r} cannot subscribe to standard topic "
                    f"{topic.name!r}: SNS delivers to FIFO queues only from FIFO topics"
                )
        dead_letter: QueueWrapper | None = None
        if dead_letter_queue_name is not None:
            if _is_fifo(dead_letter_queue_name) != fifo:
                raise ConfigurationError(
                    f"queue {queue_name!r} and its dead-letter queue {dead_letter_queue_name!r} "
                    "must both be FIFO (names ending '.fifo') or both standard"
                )
            dlq_attributes = {"FifoQueue": "true"} if fifo else {}
            dlq_url = self._create_queue(dead_letter_queue_name, dlq_attributes)
            dlq_arn = self._queue_arn(dlq_url, dead_letter_queue_name)
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
            )
            dead_letter = QueueWrapper(QueueUrl(dlq_url), dead_letter_queue_name)
        url = self._create_queue(queue_name, attributes)
        with self._lock:
            if dead_letter is not None:
                self._dead_letter_urls[url] = dead_letter.unwrapped_obj
            else:
                # The redrive policy may have been set elsewhere: read it again when needed.
                self._dead_letter_urls.pop(url, None)
        if topics_to_bind:
            queue_arn = self._queue_arn(url, queue_name)
            self._allow_topics(url, queue_name, queue_arn, topics_to_bind)
            subscription_attributes: dict[str, str] = {
                "RawMessageDelivery": "true" if kwargs.get("raw_delivery") else "false"
            }
            filter_events = kwargs.get("filter_events")
            if filter_events:
                if isinstance(filter_events, str):
                    filter_events = [filter_events]
                subscription_attributes["FilterPolicy"] = json.dumps(
                    {wire.MANIFEST_ATTRIBUTE: sorted({str(m) for m in filter_events})}
                )
            for topic in topics_to_bind:
                self._subscribe(topic, queue_arn, subscription_attributes)
        return QueueWrapper(QueueUrl(url), queue_name), dead_letter

    def _queue_attributes(self, queue_name: str, options: Mapping[str, Any]) -> dict[str, str]:
        attributes: dict[str, str] = {}
        if _is_fifo(queue_name):
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

    def _create_queue(self, queue_name: str, attributes: dict[str, str]) -> str:
        action = f"creating queue {queue_name!r}"
        with self._errors(action):
            try:
                url: str = self._sqs.create_queue(QueueName=queue_name, Attributes=attributes)[
                    "QueueUrl"
                ]
            except botocore.exceptions.ClientError as exc:
                if _code(exc) not in _QUEUE_EXISTS:
                    raise
                # It exists with other attributes: keep it (and its messages), update them.
                url = self._sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
                changeable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
                if changeable:
                    self._sqs.set_queue_attributes(QueueUrl=url, Attributes=changeable)
        with self._lock:
            self._queue_urls[queue_name] = url
        return url

    def _queue_arn(self, url: str, queue_name: str) -> str:
        with self._errors(f"reading the ARN of queue {queue_name!r}"):
            response = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(response["Attributes"]["QueueArn"])

    def _allow_topics(
        self, url: str, queue_name: str, queue_arn: str, topics: Sequence[TopicWrapper]
    ) -> None:
        """Add a statement letting each topic send to the queue; keep every other statement.

        SQS has no conditional update, so after writing, the policy is read again to check
        that a concurrent declaration did not overwrite the new statements (up to 3 tries).
        """
        action = f"updating the access policy of queue {queue_name!r}"
        topic_arns = [self._topic_arn(topic) for topic in topics]
        for _ in range(3):
            policy = self._read_policy(url, action)
            statements = policy["Statement"]
            allowed = {
                _source_arn(s)
                for s in statements
                if isinstance(s, dict) and s.get("Effect") == "Allow"
            }
            missing = [arn for arn in topic_arns if arn not in allowed]
            if not missing:
                return
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
            with self._errors(action):
                self._sqs.set_queue_attributes(
                    QueueUrl=url, Attributes={"Policy": json.dumps(policy)}
                )
        raise BackendError(
            f"{action} failed: the policy kept changing under concurrent updates; declare again"
        )

    def _read_policy(self, url: str, action: str) -> dict[str, Any]:
        with self._errors(action):
            current = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
        text = current.get("Attributes", {}).get("Policy")
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

    def _subscribe(self, topic: TopicWrapper, queue_arn: str, attributes: dict[str, str]) -> None:
        topic_arn = self._topic_arn(topic)
        action = f"subscribing {queue_arn.rsplit(':', 1)[-1]!r} to topic {topic.name!r}"
        with self._errors(action):
            try:
                response = self._sns.subscribe(
                    TopicArn=topic_arn,
                    Protocol="sqs",
                    Endpoint=queue_arn,
                    Attributes=attributes,
                    ReturnSubscriptionArn=True,
                )
                arns = [str(response["SubscriptionArn"])]
                stale = False
            except botocore.exceptions.ClientError as exc:
                if "already exists" not in _text(exc):
                    raise
                arns = [
                    str(subscription["SubscriptionArn"])
                    for page in self._sns.get_paginator("list_subscriptions_by_topic").paginate(
                        TopicArn=topic_arn
                    )
                    for subscription in page.get("Subscriptions", [])
                    if subscription.get("Endpoint") == queue_arn
                ]
                stale = True
            for arn in arns:
                if stale:
                    # It exists with other attributes: bring it to the declared ones.
                    for name, value in attributes.items():
                        self._sns.set_subscription_attributes(
                            SubscriptionArn=arn, AttributeName=name, AttributeValue=value
                        )
                if "FilterPolicy" not in attributes:
                    self._clear_filter_policy(arn)

    def _clear_filter_policy(self, subscription_arn: str) -> None:
        """Declared without ``filter_events``: let every message through again."""
        current = self._sns.get_subscription_attributes(SubscriptionArn=subscription_arn)
        policy = current.get("Attributes", {}).get("FilterPolicy")
        if policy and policy.strip() not in ("", "{}"):
            self._sns.set_subscription_attributes(
                SubscriptionArn=subscription_arn, AttributeName="FilterPolicy", AttributeValue="{}"
            )

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue and its messages, and unsubscribe it from its topics (a missing
        queue is not an error)."""
        url = self._url(queue)
        self._unsubscribe_queue(url, queue.name)
        with self._errors(f"deleting queue {queue.name!r}"):
            try:
                self._sqs.delete_queue(QueueUrl=url)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) not in _QUEUE_MISSING:
                    raise
        with self._lock:
            self._queue_urls.pop(queue.name, None)
            self._dead_letter_urls.pop(url, None)

    def _unsubscribe_queue(self, url: str, queue_name: str) -> None:
        # SNS keeps subscriptions of a deleted queue and keeps trying to deliver to it (some
        # SNS-compatible servers even refuse publishes then): remove them with the queue.
        try:
            arn = self._queue_arn(url, queue_name)
            for page in self._sns.get_paginator("list_subscriptions").paginate():
                for subscription in page.get("Subscriptions", []):
                    if (
                        subscription.get("Protocol") == "sqs"
                        and subscription.get("Endpoint") == arn
                    ):
                        self._sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
        except Exception as exc:
            logger.warning(
                "could not remove the topic subscriptions of queue %r before deleting it: %s",
                queue_name,
                exc,
            )

    def _url(self, queue: QueueWrapper) -> str:
        url = queue.unwrapped_obj
        if isinstance(url, str) and "://" in url:
            return url
        return self.get_queue(queue.name).unwrapped_obj  # type: ignore[no-any-return]

    # -- publishing -------------------------------------------------------------------------

    def _attributes(self, message: Message) -> dict[str, wire.AttributeValue]:
        return wire.encode_attributes(message.manifest, message.serializer_id, message.headers)

    @staticmethod
    def _check_size(payload: str, attributes: Mapping[str, wire.AttributeValue]) -> int:
        size = len(payload.encode("utf-8")) + wire.attributes_size(attributes)
        if size > wire.MAX_MESSAGE_SIZE:
            raise MessageTooLargeError(size, wire.MAX_MESSAGE_SIZE, "sqs")
        return size

    @staticmethod
    def _check_group(message: Message, destination: str, kind: str) -> None:
        if _is_fifo(destination) and not message.group_id:
            raise ConfigurationError(
                f"{kind} {destination!r} is FIFO: publish with a message_group_id "
                "(e.g. publisher.publish(name, data, message_group_id='orders'))"
            )

    def _queue_entry(self, message: Message, queue: QueueWrapper) -> dict[str, Any]:
        self._check_group(message, queue.name, "queue")
        body = wire.queue_body(message.content)
        attributes = self._attributes(message)
        self._check_size(body, attributes)
        entry: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
        return _with_fifo_fields(entry, queue.name, message)

    def _queue_error(self, exc: botocore.exceptions.ClientError, queue: QueueWrapper) -> Exception:
        if _code(exc) in _QUEUE_MISSING:
            with self._lock:
                self._queue_urls.pop(queue.name, None)
            return QueueNotFoundError(queue.name)
        return PublishError(f"SQS refused the message for queue {queue.name!r}: {_text(exc)}")

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Send one message (one ``SendMessage`` request).

        ``delay_seconds=`` holds it back on standard queues. Raises ``MessageTooLargeError``
        over 256 KiB and ``ConfigurationError`` for a FIFO queue without a group id, both
        before any request.

        On a FIFO queue, a message without ``deduplication_id`` is deduplicated by content,
        as in 7.2.0: SQS drops a body equal to one accepted in the previous five minutes.
        Give each message a ``message_deduplication_id`` to publish equal bodies.
        """
        entry = self._queue_entry(message, queue)
        delay = kwargs.get("delay_seconds")
        if delay and not _is_fifo(queue.name):
            entry["DelaySeconds"] = min(900, math.ceil(delay))
        url = self._url(queue)
        with self._errors(f"publishing to queue {queue.name!r}", PublishError):
            try:
                self._sqs.send_message(QueueUrl=url, **entry)
            except botocore.exceptions.ClientError as exc:
                raise self._queue_error(exc, queue) from exc

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Send messages with ``SendMessageBatch``: one request per ten messages (more when
        they are large, as a batch holds at most 256 KiB). Every message is checked before the
        first request; refused ones are reported together in a ``BatchPublishError`` (the
        others were sent). ``delay_seconds=`` holds them back on standard queues."""
        entries = [(i, m, self._queue_entry(m, queue)) for i, m in enumerate(messages)]
        if not entries:
            return
        url = self._url(queue)
        delay = kwargs.get("delay_seconds")
        if delay and not _is_fifo(queue.name):
            for _, _, entry in entries:
                entry["DelaySeconds"] = min(900, math.ceil(delay))

        def send(request: list[dict[str, Any]]) -> Any:
            try:
                return self._sqs.send_message_batch(QueueUrl=url, Entries=request)
            except botocore.exceptions.ClientError as exc:
                raise self._queue_error(exc, queue) from exc

        self._send_in_batches(
            entries, "MessageBody", send, QueueNotFoundError, f"queue {queue.name!r}"
        )

    def _send_in_batches(
        self,
        entries: list[tuple[int, Message, dict[str, Any]]],
        body_key: str,
        send: Callable[[list[dict[str, Any]]], Any],
        missing: type[Exception],
        target: str,
    ) -> None:
        """Send ``entries`` in batch requests within SQS/SNS limits; collect every refusal.

        A missing destination before anything was sent raises ``missing`` as is; later (the
        queue or topic was deleted meanwhile) and for other refusals, the affected messages
        are reported together in a ``BatchPublishError``.
        """
        failures: dict[int, str] = {}
        sent_any = False
        for chunk in _chunks(
            entries,
            lambda e: (
                len(e[body_key].encode("utf-8")) + wire.attributes_size(e["MessageAttributes"])
            ),
        ):
            request = [{"Id": str(i), **entry} for i, _, entry in chunk]
            try:
                with self._errors(f"publishing a batch to {target}", PublishError):
                    response = send(request)
            except missing:
                if not sent_any:
                    raise
                failures.update({i: f"{target} no longer exists" for i, _, _ in chunk})
                continue
            except (PublishError, BackendError) as exc:
                failures.update({i: str(exc) for i, _, _ in chunk})
                continue
            sent_any = True
            for failed in response.get("Failed", []):
                failures[int(failed["Id"])] = f"{failed.get('Code')}: {failed.get('Message', '')}"
        if failures:
            raise BatchPublishError(failures)

    def _topic_entry(self, message: Message, topic: TopicWrapper) -> dict[str, Any]:
        self._check_group(message, topic.name, "topic")
        if not message.content:
            raise PublishError(f"SNS refuses empty messages; nothing published to {topic.name!r}")
        attributes = self._attributes(message)
        self._check_size(message.content, attributes)
        entry: dict[str, Any] = {
            "Message": message.content,
            "MessageAttributes": wire.to_sns_attributes(attributes),
        }
        return _with_fifo_fields(entry, topic.name, message)

    def _topic_error(self, exc: botocore.exceptions.ClientError, topic: TopicWrapper) -> Exception:
        if _code(exc) in _TOPIC_MISSING:
            with self._lock:
                self._topic_arns.pop(topic.name, None)
            return TopicNotFoundError(topic.name)
        return PublishError(f"SNS refused the message for topic {topic.name!r}: {_text(exc)}")

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """Publish one message to the SNS topic (one ``Publish`` request)."""
        entry = self._topic_entry(message, topic)
        arn = self._topic_arn(topic)
        with self._errors(f"publishing to topic {topic.name!r}", PublishError):
            try:
                self._sns.publish(TopicArn=arn, **entry)
            except botocore.exceptions.ClientError as exc:
                raise self._topic_error(exc, topic) from exc

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish with SNS ``PublishBatch``: one request per ten messages (more when large);
        refused messages are reported together in a ``BatchPublishError``."""
        entries = [(i, m, self._topic_entry(m, topic)) for i, m in enumerate(messages)]
        if not entries:
            return
        arn = self._topic_arn(topic)

        def send(request: list[dict[str, Any]]) -> Any:
            try:
                return self._sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=request)
            except botocore.exceptions.ClientError as exc:
                raise self._topic_error(exc, topic) from exc

        self._send_in_batches(entries, "Message", send, TopicNotFoundError, f"topic {topic.name!r}")

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Long-poll the queue once and return up to ``max_messages`` (at most 10).

        Keyword arguments: ``max_messages`` (default ``max_number_of_messages``),
        ``wait_seconds`` (default ``wait_time_seconds``, at most 20, rounded up to whole
        seconds) and ``visibility_timeout`` (default the backend's).
        """
        max_messages = kwargs.get("max_messages") or self.max_number_of_messages
        max_messages = max(1, min(wire.MAX_BATCH_ENTRIES, int(max_messages)))
        wait = kwargs.get("wait_seconds")
        wait_seconds = self.wait_time_seconds if wait is None else math.ceil(float(wait))
        wait_seconds = max(0, min(MAX_WAIT_SECONDS, wait_seconds))
        request: dict[str, Any] = {
            "QueueUrl": self._url(queue),
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_seconds,
            "MessageAttributeNames": ["All"],
            "MessageSystemAttributeNames": list(_SYSTEM_ATTRIBUTES),
            # The older name of the same parameter, for SQS-compatible brokers that predate it.
            "AttributeNames": list(_SYSTEM_ATTRIBUTES),
        }
        visibility = kwargs.get("visibility_timeout", self.visibility_timeout)
        if visibility is not None:
            request["VisibilityTimeout"] = max(
                0, min(MAX_VISIBILITY_TIMEOUT, math.ceil(visibility))
            )
        with self._errors(f"receiving from queue {queue.name!r}"):
            try:
                response = self._sqs.receive_message(**request)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _QUEUE_MISSING:
                    with self._lock:
                        self._queue_urls.pop(queue.name, None)
                    raise QueueNotFoundError(queue.name) from exc
                raise
        return [
            self._to_message(raw, request["QueueUrl"], queue.name)
            for raw in response.get("Messages", [])
        ]

    @staticmethod
    def _to_message(raw: Mapping[str, Any], url: str, queue_name: str) -> Message:
        body = raw.get("Body", "")
        attributes = raw.get("MessageAttributes", {}) or {}
        system = raw.get("Attributes", {}) or {}
        decoded = wire.decode(body, attributes)
        count = system.get("ApproximateReceiveCount")
        receipt = SQSReceipt(
            queue_url=url,
            queue_name=queue_name,
            receipt_handle=raw["ReceiptHandle"],
            sqs_message_id=raw["MessageId"],
            body=body,
            attributes=dict(attributes),
        )
        return Message(
            raw["MessageId"],
            decoded.content,
            receipt,
            decoded.serializer_id,
            decoded.manifest,
            decoded.headers,
            int(count) if count is not None else None,
            system.get("MessageGroupId"),
            system.get("MessageDeduplicationId"),
        )

    @staticmethod
    def _receipt(message: Message) -> SQSReceipt:
        receipt = message.metadata
        if not isinstance(receipt, SQSReceipt):
            raise ValueError(
                f"{message!r} was not received from an SQS backend: it has no receipt handle"
            )
        return receipt

    def _settle(self, action: str, call: Callable[[], object]) -> None:
        """Run a settle request; a stale receipt (lease expired, already settled) is a no-op."""
        with self._errors(action):
            try:
                call()
            except botocore.exceptions.ClientError as exc:
                if _code(exc) not in _STALE_RECEIPT:
                    raise
                logger.warning(
                    "%s: receipt no longer valid (%s); SQS will redeliver it", action, _text(exc)
                )

    def acknowledge(self, message: Message) -> None:
        """Delete the message from its queue (``DeleteMessage``)."""
        receipt = self._receipt(message)
        self._settle(
            f"acknowledging message {message.message_id}",
            lambda: self._sqs.delete_message(
                QueueUrl=receipt.queue_url, ReceiptHandle=receipt.receipt_handle
            ),
        )

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete messages with ``DeleteMessageBatch``, one request per ten per queue.

        Stale receipts are logged and skipped; any other refusal raises ``BackendError``
        naming the messages (they will be delivered again).
        """
        by_queue: dict[str, list[Message]] = {}
        for message in messages:
            by_queue.setdefault(self._receipt(message).queue_url, []).append(message)
        problems: list[str] = []
        for url, group in by_queue.items():
            for start in range(0, len(group), wire.MAX_BATCH_ENTRIES):
                chunk = group[start : start + wire.MAX_BATCH_ENTRIES]
                entries = [
                    {"Id": str(i), "ReceiptHandle": self._receipt(m).receipt_handle}
                    for i, m in enumerate(chunk)
                ]
                with self._errors(f"acknowledging {len(chunk)} message(s)"):
                    response = self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                for failed in response.get("Failed", []):
                    message = chunk[int(failed["Id"])]
                    reason = f"{failed.get('Code')}: {failed.get('Message', '')}"
                    if failed.get("Code") in _STALE_RECEIPT:
                        logger.warning(
                            "acknowledging message %s: receipt no longer valid (%s); "
                            "SQS will redeliver it",
                            message.message_id,
                            reason,
                        )
                    else:
                        problems.append(f"{message.message_id} ({reason})")
        if problems:
            raise BackendError(
                f"SQS did not delete {len(problems)} message(s), which will be delivered "
                f"again: {'; '.join(problems)}"
            )

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds (``ChangeMessageVisibility``;
        rounded up, at most 12 hours)."""
        self._change_visibility(message, delay, "releasing")

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep the message hidden ``seconds`` more from now (at most 12 hours)."""
        self._change_visibility(message, seconds, "extending the visibility of")

    def _change_visibility(self, message: Message, seconds: float, verb: str) -> None:
        receipt = self._receipt(message)
        timeout = max(0, min(MAX_VISIBILITY_TIMEOUT, math.ceil(seconds)))
        self._settle(
            f"{verb} message {message.message_id}",
            lambda: self._sqs.change_message_visibility(
                QueueUrl=receipt.queue_url,
                ReceiptHandle=receipt.receipt_handle,
                VisibilityTimeout=timeout,
            ),
        )

    def _dead_letter_url(self, receipt: SQSReceipt) -> str | None:
        with self._lock:
            if receipt.queue_url in self._dead_letter_urls:
                return self._dead_letter_urls[receipt.queue_url]
        with self._errors(f"reading the redrive policy of queue {receipt.queue_name!r}"):
            response = self._sqs.get_queue_attributes(
                QueueUrl=receipt.queue_url, AttributeNames=["RedrivePolicy"]
            )
        text = response.get("Attributes", {}).get("RedrivePolicy")
        url: str | None = None
        if text:
            arn = str(json.loads(text).get("deadLetterTargetArn", ""))
            parts = arn.split(":")
            if len(parts) >= 6:
                url = self._lookup_queue_url(parts[5], owner=parts[4] or None)
        with self._lock:
            self._dead_letter_urls[receipt.queue_url] = url
        return url

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Send a copy (original body and attributes plus ``headers``) to the queue's
        dead-letter queue, named by its redrive policy, then delete the original.

        Returns ``False``, leaving the message alone, when the queue has no redrive policy.
        """
        receipt = self._receipt(message)
        dlq_url = self._dead_letter_url(receipt)
        if dlq_url is None:
            return False
        entry = self._dead_letter_entry(message, receipt, headers, dlq_url)
        with self._errors(f"dead-lettering message {message.message_id}"):
            self._sqs.send_message(QueueUrl=dlq_url, **entry)
        self._settle(
            f"deleting dead-lettered message {message.message_id}",
            lambda: self._sqs.delete_message(
                QueueUrl=receipt.queue_url, ReceiptHandle=receipt.receipt_handle
            ),
        )
        return True

    def _dead_letter_entry(
        self, message: Message, receipt: SQSReceipt, headers: Mapping[str, str], dlq_url: str
    ) -> dict[str, Any]:
        # Keep the original attributes; decode them to headers so that the overflow attribute
        # is rebuilt rather than duplicated, and add the failure headers on top.
        originals = dict(receipt.attributes)
        kept: dict[str, wire.AttributeValue] = {}
        strings: dict[str, str] = {}
        for name, value in originals.items():
            if name in (wire.MANIFEST_ATTRIBUTE, wire.SERIALIZER_ID_ATTRIBUTE) or (
                value.get("DataType", "").startswith("Binary")
            ):
                kept[name] = {
                    k: v
                    for k, v in value.items()
                    if k in ("DataType", "StringValue", "BinaryValue")
                }
            elif "StringValue" in value:
                strings[name] = str(value["StringValue"])
        original = wire.headers_from_strings(strings)
        reason = headers.get(FAILURE_REASON, "dead-lettered")
        body_size = len(receipt.body.encode("utf-8"))
        # Every header if it fits; near the size limit, the original headers and a shortened
        # reason; at worst the shortened reason alone. The body is always kept whole.
        candidates = [
            {**original, **{k: v[:1024] for k, v in headers.items()}},
            {**original, FAILURE_REASON: reason[:200]},
            {FAILURE_REASON: reason[:200]},
        ]
        shortened = False
        for candidate in candidates:
            attributes = wire.encode_attributes(None, None, candidate, kept)
            if body_size + wire.attributes_size(attributes) <= wire.MAX_MESSAGE_SIZE:
                break
            shortened = True
        if shortened:
            logger.warning(
                "message %s is too close to the SQS size limit to carry every header to the "
                "dead-letter queue; some headers were left out of the copy",
                message.message_id,
            )
        entry: dict[str, Any] = {"MessageBody": receipt.body, "MessageAttributes": attributes}
        if _is_fifo(dlq_url):
            entry["MessageGroupId"] = message.group_id or "melange-dead-letters"
            # The SQS id, so distinct messages with equal bodies are never merged in the
            # dead-letter queue while a retried move of the same message is.
            entry["MessageDeduplicationId"] = receipt.sqs_message_id
        return entry

    # -- lifecycle --------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Does nothing: an SQS long poll cannot be cut short, so a stop waits for at most
        one poll (``wait_time_seconds``)."""

    def close_connection(self) -> None:
        """Close the HTTP connections of both clients."""
        self._sqs.close()
        self._sns.close()


__all__ = [
    "DEFAULT_MAX_RECEIVE_COUNT",
    "QUEUE_ATTRIBUTE_OPTIONS",
    "AWSBackend",
    "QueueUrl",
    "SQSReceipt",
    "TopicArn",
]
