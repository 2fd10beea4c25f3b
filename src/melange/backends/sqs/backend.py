"""Amazon SQS and SNS as a Melange backend (needs the ``aws`` extra: boto3).

Queues are SQS queues, topics are SNS topics, and a queue is bound to a topic by an SNS
subscription. The wire format is the one Melange 7.2.0 used, so old and new services can
share queues and topics; see :mod:`melange.backends.sqs.wire`.

Costs: once a queue URL or topic ARN is known (they are cached), publishing one message is
one HTTP request, a batch is one request per ten messages, and consuming a full queue takes
one receive and one batched delete per ten messages.

Stopping: :meth:`AWSBackend.interrupt` cannot cut an SQS long poll short, so a dispatcher
being stopped returns after at most one long poll (``wait_time_seconds``).

:class:`AWSBackend` publishes, receives and settles; it delegates the clients and error
reporting to :mod:`~melange.backends.sqs.connection`, queues, topics and subscriptions to
:mod:`~melange.backends.sqs.topology`, and the message format to
:mod:`~melange.backends.sqs.wire`. What it does is written once, in :class:`SQSOperations`,
as requests (:class:`~melange.backends.sqs.connection.Call`) it performs with boto3; the
asyncio backend (:mod:`~melange.backends.sqs.async_backend`) awaits the same requests on
aiobotocore.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.numbers import check_number, check_optional_number
from melange.backends.publish_options import (
    apply_fifo_keywords,
    delay_refused,
    fifo_delay_refused,
    publish_delay,
)
from melange.backends.sqs import wire
from melange.backends.sqs.connection import (
    MAX_WAIT_SECONDS,
    QUEUE_MISSING,
    STALE_RECEIPT,
    TOPIC_MISSING,
    Call,
    ClientError,
    Steps,
    code,
    errors,
    make_clients,
    run_steps,
    text,
)
from melange.backends.sqs.inspect import SQSInspection
from melange.backends.sqs.topology import QueueUrl, Topology
from melange.backends.sqs.wire import (
    SQSReceipt,
    chunks,
    dead_letter_entry,
    is_fifo,
    queue_entry,
    to_message,
    topic_entry,
)
from melange.exceptions import (
    BackendError,
    BatchPublishError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

if TYPE_CHECKING:
    import boto3
    import botocore.config
    from mypy_boto3_sns.client import SNSClient
    from mypy_boto3_sqs.client import SQSClient

logger = logging.getLogger("melange.backends.sqs")

_T = TypeVar("_T")

#: The longest visibility timeout SQS accepts (12 hours).
MAX_VISIBILITY_TIMEOUT = 43_200
#: The longest delay SQS gives a message (15 minutes).
MAX_DELAY_SECONDS = 900

_SYSTEM_ATTRIBUTES = ("ApproximateReceiveCount", "MessageGroupId", "MessageDeduplicationId")


class SQSOperations:
    """What the SQS/SNS backends do, written once for the blocking and the asyncio one.

    Options are checked and kept by :meth:`_configure`; every operation is
    :data:`~melange.backends.sqs.connection.Steps` (the requests it needs, with the answers'
    meaning and the errors' mapping), which :class:`AWSBackend` performs with boto3 and
    :class:`~melange.backends.sqs.async_backend.AsyncAWSBackend` with aiobotocore.
    """

    max_number_of_messages: int
    visibility_timeout: int | None
    wait_time_seconds: int
    _topology: Topology

    def _configure(
        self,
        max_number_of_messages: int,
        visibility_timeout: float | None,
        wait_time_seconds: int,
    ) -> None:
        check_number("max_number_of_messages", max_number_of_messages, integer=True)
        check_number("wait_time_seconds", wait_time_seconds, integer=True)
        check_optional_number("visibility_timeout", visibility_timeout)
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
        self.visibility_timeout = None if visibility_timeout is None else int(visibility_timeout)
        self.wait_time_seconds = int(wait_time_seconds)
        self._topology = Topology()

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
            delayed_publish=True,
            # SNS holds nothing back: a delay is the subscribed queues' own setting.
            delayed_topic_publish=False,
            max_publish_delay=MAX_DELAY_SECONDS,
            # "At-least-once delivery ... occasionally more than one copy" (standard queues).
            duplicate_deliveries=True,
        )

    def visibility_timeout_for(self, message: Message) -> float | None:
        """The lease of a received message: the backend's ``visibility_timeout`` (``None``
        when each queue's own setting applies)."""
        if self.visibility_timeout:
            return float(self.visibility_timeout)
        return None

    # -- publishing -------------------------------------------------------------------------

    def _queue_error(self, exc: ClientError, queue: QueueWrapper) -> Exception:
        if code(exc) in QUEUE_MISSING:
            self._topology.forget_queue(queue.name)
            return QueueNotFoundError(queue.name)
        return PublishError(f"SQS refused the message for queue {queue.name!r}: {text(exc)}")

    def _topic_error(self, exc: ClientError, topic: TopicWrapper) -> Exception:
        if code(exc) in TOPIC_MISSING:
            self._topology.forget_topic(topic.name)
            return TopicNotFoundError(topic.name)
        return PublishError(f"SNS refused the message for topic {topic.name!r}: {text(exc)}")

    @staticmethod
    def _delay(entry: dict[str, Any], queue_name: str, kwargs: Mapping[str, Any]) -> None:
        """``delay_seconds=`` holds messages back on standard queues, rounded up to whole
        seconds (at most 15 minutes); refused on FIFO queues, which SQS gives no per-message
        delay."""
        delay = publish_delay(kwargs, limit=MAX_DELAY_SECONDS, backend="SQS")
        if delay is None:
            return
        if is_fifo(queue_name):
            raise fifo_delay_refused(queue_name)
        entry["DelaySeconds"] = math.ceil(delay)

    @staticmethod
    def _no_topic_delay(topic: TopicWrapper, kwargs: Mapping[str, Any] | None) -> None:
        if kwargs and publish_delay(kwargs, backend="SNS") is not None:
            raise delay_refused(
                "SNS",
                f"a message to topic {topic.name!r}",
                " (or declare the subscribed queues with delay_seconds)",
            )

    def _queue_attributes(self, url: str) -> Steps[dict[str, str]]:
        with errors(f"reading the attributes of queue {url!r}"):
            response = yield Call(
                "sqs", "get_queue_attributes", {"QueueUrl": url, "AttributeNames": ["All"]}
            )
        return dict(response.get("Attributes", {}))

    def _publish_to_queue(
        self, message: Message, queue: QueueWrapper, kwargs: Mapping[str, Any]
    ) -> Steps[None]:
        apply_fifo_keywords((message,), kwargs)
        entry = queue_entry(message, queue.name)
        self._delay(entry, queue.name, kwargs)
        url = yield from self._topology.url(queue)
        with errors(f"publishing to queue {queue.name!r}", PublishError):
            try:
                yield Call("sqs", "send_message", {"QueueUrl": url, **entry})
            except ClientError as exc:
                raise self._queue_error(exc, queue) from exc

    def _publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, kwargs: Mapping[str, Any]
    ) -> Steps[None]:
        apply_fifo_keywords(messages, kwargs)
        entries = [(i, m, queue_entry(m, queue.name)) for i, m in enumerate(messages)]
        if not entries:
            return
        url = yield from self._topology.url(queue)
        for _, _, entry in entries:
            self._delay(entry, queue.name, kwargs)

        def send(request: list[dict[str, Any]]) -> Steps[Any]:
            try:
                return (
                    yield Call("sqs", "send_message_batch", {"QueueUrl": url, "Entries": request})
                )
            except ClientError as exc:
                raise self._queue_error(exc, queue) from exc

        yield from self._send_in_batches(
            entries, "MessageBody", send, QueueNotFoundError, f"queue {queue.name!r}"
        )

    def _send_in_batches(
        self,
        entries: list[tuple[int, Message, dict[str, Any]]],
        body_key: str,
        send: Callable[[list[dict[str, Any]]], Steps[Any]],
        missing: type[Exception],
        target: str,
    ) -> Steps[None]:
        """Send ``entries`` in batch requests within SQS/SNS limits; collect every refusal.

        A missing destination before anything was sent raises ``missing`` as is; later (the
        queue or topic was deleted meanwhile) and for other refusals, the affected messages
        are reported together in a ``BatchPublishError``.
        """
        failures: dict[int, str] = {}
        sent_any = False
        for chunk in chunks(
            entries,
            lambda e: (
                len(e[body_key].encode("utf-8")) + wire.attributes_size(e["MessageAttributes"])
            ),
        ):
            request = [{"Id": str(i), **entry} for i, _, entry in chunk]
            try:
                with errors(f"publishing a batch to {target}", PublishError):
                    response = yield from send(request)
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

    def _publish_to_topic(
        self, message: Message, topic: TopicWrapper, kwargs: Mapping[str, Any] | None = None
    ) -> Steps[None]:
        self._no_topic_delay(topic, kwargs)
        apply_fifo_keywords((message,), kwargs or {})
        entry = topic_entry(message, topic.name)
        arn = yield from self._topology.topic_arn(topic)
        with errors(f"publishing to topic {topic.name!r}", PublishError):
            try:
                yield Call("sns", "publish", {"TopicArn": arn, **entry})
            except ClientError as exc:
                raise self._topic_error(exc, topic) from exc

    def _publish_batch_to_topic(
        self,
        messages: Sequence[Message],
        topic: TopicWrapper,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Steps[None]:
        self._no_topic_delay(topic, kwargs)
        apply_fifo_keywords(messages, kwargs or {})
        entries = [(i, m, topic_entry(m, topic.name)) for i, m in enumerate(messages)]
        if not entries:
            return
        arn = yield from self._topology.topic_arn(topic)

        def send(request: list[dict[str, Any]]) -> Steps[Any]:
            try:
                return (
                    yield Call(
                        "sns",
                        "publish_batch",
                        {"TopicArn": arn, "PublishBatchRequestEntries": request},
                    )
                )
            except ClientError as exc:
                raise self._topic_error(exc, topic) from exc

        yield from self._send_in_batches(
            entries, "Message", send, TopicNotFoundError, f"topic {topic.name!r}"
        )

    # -- consuming --------------------------------------------------------------------------

    def _retrieve_messages(
        self, queue: QueueWrapper, kwargs: Mapping[str, Any]
    ) -> Steps[list[Message]]:
        max_messages = kwargs.get("max_messages") or self.max_number_of_messages
        max_messages = max(1, min(wire.MAX_BATCH_ENTRIES, int(max_messages)))
        wait = kwargs.get("wait_seconds")
        wait_seconds = self.wait_time_seconds if wait is None else math.ceil(float(wait))
        wait_seconds = max(0, min(MAX_WAIT_SECONDS, wait_seconds))
        url = yield from self._topology.url(queue)
        request: dict[str, Any] = {
            "QueueUrl": url,
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
        with errors(f"receiving from queue {queue.name!r}"):
            try:
                response = yield Call("sqs", "receive_message", request)
            except ClientError as exc:
                if code(exc) in QUEUE_MISSING:
                    self._topology.forget_queue(queue.name)
                    raise QueueNotFoundError(queue.name) from exc
                raise
        return [to_message(raw, url, queue.name) for raw in response.get("Messages", [])]

    @staticmethod
    def _receipt(message: Message) -> SQSReceipt:
        receipt = message.metadata
        if not isinstance(receipt, SQSReceipt):
            raise ValueError(
                f"{message!r} was not received from an SQS backend: it has no receipt handle"
            )
        return receipt

    @staticmethod
    def _settle(action: str, call: Call) -> Steps[None]:
        """Send a settle request; a stale receipt (lease expired, already settled) is a no-op."""
        with errors(action):
            try:
                yield call
            except ClientError as exc:
                if code(exc) not in STALE_RECEIPT:
                    raise
                logger.warning(
                    "%s: receipt no longer valid (%s); SQS will redeliver it", action, text(exc)
                )

    @staticmethod
    def _delete(receipt: SQSReceipt) -> Call:
        return Call(
            "sqs",
            "delete_message",
            {"QueueUrl": receipt.queue_url, "ReceiptHandle": receipt.receipt_handle},
        )

    def _acknowledge(self, message: Message) -> Steps[None]:
        receipt = self._receipt(message)
        yield from self._settle(
            f"acknowledging message {message.message_id}", self._delete(receipt)
        )

    def _acknowledge_batch(self, messages: Sequence[Message]) -> Steps[None]:
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
                with errors(f"acknowledging {len(chunk)} message(s)"):
                    response = yield Call(
                        "sqs", "delete_message_batch", {"QueueUrl": url, "Entries": entries}
                    )
                for failed in response.get("Failed", []):
                    message = chunk[int(failed["Id"])]
                    reason = f"{failed.get('Code')}: {failed.get('Message', '')}"
                    if failed.get("Code") in STALE_RECEIPT:
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

    def _change_visibility(self, message: Message, seconds: float, verb: str) -> Steps[None]:
        receipt = self._receipt(message)
        timeout = max(0, min(MAX_VISIBILITY_TIMEOUT, math.ceil(seconds)))
        yield from self._settle(
            f"{verb} message {message.message_id}",
            Call(
                "sqs",
                "change_message_visibility",
                {
                    "QueueUrl": receipt.queue_url,
                    "ReceiptHandle": receipt.receipt_handle,
                    "VisibilityTimeout": timeout,
                },
            ),
        )

    def _dead_letter(self, message: Message, headers: Mapping[str, str]) -> Steps[bool]:
        receipt = self._receipt(message)
        dlq_url = yield from self._topology.dead_letter_url(receipt)
        if dlq_url is None:
            return False
        entry = dead_letter_entry(message, receipt, headers, dlq_url)
        with errors(f"dead-lettering message {message.message_id}"):
            yield Call("sqs", "send_message", {"QueueUrl": dlq_url, **entry})
        yield from self._settle(
            f"deleting dead-lettered message {message.message_id}", self._delete(receipt)
        )
        return True


class AWSBackend(SQSOperations, SQSInspection, MessagingBackend):
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
        self._configure(max_number_of_messages, visibility_timeout, wait_time_seconds)
        self._sqs, self._sns = make_clients(
            region_name=region_name,
            endpoint_url=endpoint_url,
            sns_endpoint_url=sns_endpoint_url,
            session=session,
            config=config,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
        )

    def _run(self, steps: Steps[_T]) -> _T:
        return run_steps(steps, self._sqs, self._sns)

    # -- clients -----------------------------------------------------------------------

    @property
    def sqs_client(self) -> SQSClient:
        """The boto3 SQS client (for inspection and request counting)."""
        return cast("SQSClient", self._sqs)

    @property
    def sns_client(self) -> SNSClient:
        """The boto3 SNS client (for inspection and request counting)."""
        return cast("SNSClient", self._sns)

    # -- topology (see melange.backends.sqs.topology) ---------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the SNS topic if needed (a ``.fifo`` name makes a FIFO topic with
        content-based deduplication) and return it; its ARN is cached."""
        return self._run(self._topology.declare_topic(topic_name))

    def get_topic(self, topic_name: str) -> TopicWrapper:
        """The existing topic (its ARN looked up once, then cached); never creates it.

        Raises :class:`~melange.exceptions.TopicNotFoundError` when it does not exist.
        """
        return self._run(self._topology.get_topic(topic_name))

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic and its subscriptions (a missing topic is not an error)."""
        self._run(self._topology.delete_topic(topic))

    def get_queue(self, queue_name: str) -> QueueWrapper:
        """The existing queue (its URL looked up once, then cached); never creates it.

        Raises :class:`~melange.exceptions.QueueNotFoundError` only when SQS says the queue
        does not exist; other failures (permissions, network) raise ``BackendError``. The
        handle's ``unwrapped_obj`` is the queue URL, whose ``.attributes`` reads the queue's
        SQS attributes (one request, on first use), as the boto3 queue of 7.2.0 did.
        """
        return self._readable(self._run(self._topology.get_queue(queue_name)))

    def _readable(self, queue: QueueWrapper) -> QueueWrapper:
        """``queue`` with a URL whose ``.attributes`` this backend reads."""
        url = queue.unwrapped_obj
        if isinstance(url, QueueUrl):
            url.bind_reader(lambda address: self._run(self._queue_attributes(address)))
        return queue

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
                SQS attributes (see
                :data:`~melange.backends.sqs.topology.QUEUE_ATTRIBUTE_OPTIONS`); fractions of a
                second are rounded up, as SQS counts whole seconds.

        A ``.fifo`` name makes a FIFO queue with content-based deduplication; its dead-letter
        queue must be FIFO too, and it can only subscribe to FIFO topics. Existing queues keep
        their messages and get the given attributes. Subscribing adds one statement per topic
        to the queue's access policy and keeps every other statement.
        """
        queue, dead_letter = self._run(
            self._topology.declare_queue(
                queue_name, *topics_to_bind, dead_letter_queue_name=dead_letter_queue_name, **kwargs
            )
        )
        return self._readable(queue), self._readable(dead_letter) if dead_letter else None

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue and its messages, and unsubscribe it from its topics (a missing
        queue is not an error)."""
        self._run(self._topology.delete_queue(queue))

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Send one message (one ``SendMessage`` request).

        ``delay_seconds=`` holds it back on standard queues (at most 900 seconds, rounded up
        to whole seconds); ``message_group_id=`` and ``message_deduplication_id=`` set the
        message's FIFO keys, as in 7.2.0. Raises ``MessageTooLargeError`` over 256 KiB and
        ``ConfigurationError`` for a FIFO queue without a group id or with a delay, all
        before any request.

        On a FIFO queue, a message without ``deduplication_id`` is deduplicated by content,
        as in 7.2.0: SQS drops a body equal to one accepted in the previous five minutes.
        Give each message a ``message_deduplication_id`` to publish equal bodies.
        """
        self._run(self._publish_to_queue(message, queue, kwargs))

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Send messages with ``SendMessageBatch``: one request per ten messages (more when
        they are large, as a batch holds at most 256 KiB). Every message is checked before the
        first request; refused ones are reported together in a ``BatchPublishError`` (the
        others were sent). ``delay_seconds=`` holds them back on standard queues."""
        self._run(self._publish_batch_to_queue(messages, queue, kwargs))

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """Publish one message to the SNS topic (one ``Publish`` request).

        SNS cannot delay a message: ``delay_seconds=`` raises ``ConfigurationError``.
        """
        self._run(self._publish_to_topic(message, topic, kwargs))

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish with SNS ``PublishBatch``: one request per ten messages (more when large);
        refused messages are reported together in a ``BatchPublishError``."""
        self._run(self._publish_batch_to_topic(messages, topic, kwargs))

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Long-poll the queue once and return up to ``max_messages`` (at most 10).

        Keyword arguments: ``max_messages`` (default ``max_number_of_messages``),
        ``wait_seconds`` (default ``wait_time_seconds``, at most 20, rounded up to whole
        seconds) and ``visibility_timeout`` (default the backend's).
        """
        return self._run(self._retrieve_messages(queue, kwargs))

    def acknowledge(self, message: Message) -> None:
        """Delete the message from its queue (``DeleteMessage``)."""
        self._run(self._acknowledge(message))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete messages with ``DeleteMessageBatch``, one request per ten per queue.

        Stale receipts are logged and skipped; any other refusal raises ``BackendError``
        naming the messages (they will be delivered again).
        """
        self._run(self._acknowledge_batch(messages))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds (``ChangeMessageVisibility``;
        rounded up, at most 12 hours)."""
        self._run(self._change_visibility(message, delay, "releasing"))

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep the message hidden ``seconds`` more from now (at most 12 hours)."""
        self._run(self._change_visibility(message, seconds, "extending the visibility of"))

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Send a copy (original body and attributes plus ``headers``) to the queue's
        dead-letter queue, named by its redrive policy, then delete the original.

        Returns ``False``, leaving the message alone, when the queue has no redrive policy.
        """
        return self._run(self._dead_letter(message, headers))

    # -- lifecycle --------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Does nothing: an SQS long poll cannot be cut short, so a stop waits for at most
        one poll (``wait_time_seconds``)."""

    def close_connection(self) -> None:
        """Close the HTTP connections of both clients."""
        self._sqs.close()
        self._sns.close()


__all__ = ["MAX_VISIBILITY_TIMEOUT", "AWSBackend", "SQSOperations"]
