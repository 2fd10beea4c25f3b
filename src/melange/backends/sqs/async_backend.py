"""Amazon SQS and SNS on asyncio: :class:`AsyncAWSBackend`, on aiobotocore.

Needs the ``aws-async`` extra: ``pip install 'melange[aws-async]'``.

It behaves as :class:`~melange.backends.sqs.backend.AWSBackend` does, because it runs the
same code: constructor arguments, capabilities, queues and topics, subscriptions and filter
policies, the 7.2.0 wire format and the mapping of SQS/SNS answers to Melange errors all come
from :class:`~melange.backends.sqs.backend.SQSOperations` and the
:mod:`~melange.backends.sqs.topology`, :mod:`~melange.backends.sqs.wire` and
:mod:`~melange.backends.sqs.connection` modules. Each operation there is a sequence of requests
(:class:`~melange.backends.sqs.connection.Call`); this backend awaits them on aiobotocore's
clients where the blocking one sends them with boto3. Messages published by either are
consumed by the other, and the request costs are the same: one request per publish, one per
ten messages in a batch, receives of up to ten messages with long polling, batched deletes.

The clients are created on first use (or by :meth:`AsyncAWSBackend.connect`, or
``async with``) on the running event loop, and closed by :meth:`AsyncAWSBackend.aclose`.
Use one instance from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

try:
    import aiobotocore.config  # type: ignore[import-untyped]
    import aiobotocore.session  # type: ignore[import-untyped]
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the asyncio SQS/SNS backend needs aiobotocore ({exc}): pip install 'melange[aws-async]'"
    ) from exc

import botocore.config
import botocore.exceptions

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.sqs.backend import SQSOperations
from melange.backends.sqs.connection import NO_REGION, Call, Steps, client_options
from melange.backends.sqs.localsqs import local_options
from melange.exceptions import BackendError, ConfigurationError
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")


class AsyncAWSBackend(SQSOperations, AsyncMessagingBackend):
    """Amazon SQS queues and SNS topics, for asyncio code.

    The arguments are those of :class:`~melange.backends.sqs.backend.AWSBackend`, except
    ``session``, which is an ``aiobotocore.session.AioSession``. Region and credentials are
    found the way botocore finds them (environment, shared config, instance role...) unless
    given here; they never appear in errors, logs or ``repr``.

    Args:
        max_number_of_messages: Messages one receive asks for (1-10).
        visibility_timeout: Seconds a received message stays hidden, requested on every
            receive; ``None`` uses each queue's own setting. Whole seconds, rounded up.
        wait_time_seconds: Long-poll duration of a receive (0-20).
        region_name: AWS region; default: botocore's resolution.
        endpoint_url: SQS endpoint (for SQS-compatible brokers or VPC endpoints).
        sns_endpoint_url: SNS endpoint; defaults to ``endpoint_url``.
        session: An ``aiobotocore.session.AioSession`` to build the clients from.
        config: A ``botocore.config.Config`` (or ``AioConfig``) for both clients.
        aws_access_key_id: Explicit credentials (default: botocore's resolution).
        aws_secret_access_key: Explicit credentials.
        aws_session_token: Explicit credentials.

    Example::

        async with AsyncAWSBackend(region_name="eu-west-1") as backend:
            queue, _ = await backend.declare_queue("orders")
            for message in await backend.retrieve_messages(queue):
                ...
                await backend.acknowledge(message)
    """

    name = "sqs"

    def __init__(
        self,
        max_number_of_messages: int = 10,
        visibility_timeout: float | None = 100,
        wait_time_seconds: int = 10,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        sns_endpoint_url: str | None = None,
        session: Any = None,
        config: botocore.config.Config | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
    ) -> None:
        self._configure(max_number_of_messages, visibility_timeout, wait_time_seconds)
        self._session: Any = session or aiobotocore.session.get_session()
        self._options = client_options(
            region_name=region_name,
            session_region=self._session.get_config_variable("region"),
            config=config,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
        )
        self._options["config"] = aiobotocore.config.AioConfig().merge(self._options["config"])
        #: The SQS endpoint URL (``None``: AWS's, resolved from the region).
        self.endpoint_url = endpoint_url
        #: The SNS endpoint URL (``None``: AWS's, resolved from the region).
        self.sns_endpoint_url = sns_endpoint_url or endpoint_url
        self._clients: dict[str, Any] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        where = self.endpoint_url or self._options["region_name"] or "AWS"
        return f"<{type(self).__name__} {where}>"

    # -- clients ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the SQS and SNS clients (done by the first call otherwise)."""
        await self._connect()

    async def _connect(self) -> dict[str, Any]:
        if self._closed:
            raise BackendError(f"{self!r} is closed")
        if self._clients is not None:
            return self._clients
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._clients is not None:
                return self._clients
            stack = contextlib.AsyncExitStack()
            try:
                sqs = await stack.enter_async_context(self._create_client("sqs", self.endpoint_url))
                sns = await stack.enter_async_context(
                    self._create_client("sns", self.sns_endpoint_url)
                )
            except botocore.exceptions.NoRegionError as exc:
                await stack.aclose()
                raise ConfigurationError(NO_REGION) from exc
            except BaseException:
                await stack.aclose()
                raise
            self._stack = stack
            self._clients = {"sqs": sqs, "sns": sns}
            return self._clients

    def _create_client(self, service: str, endpoint_url: str | None) -> Any:
        return self._session.create_client(service, endpoint_url=endpoint_url, **self._options)

    @property
    def sqs_client(self) -> Any:
        """The aiobotocore SQS client (for inspection and request counting); ``None`` before
        the backend connected."""
        return None if self._clients is None else self._clients["sqs"]

    @property
    def sns_client(self) -> Any:
        """The aiobotocore SNS client; ``None`` before the backend connected."""
        return None if self._clients is None else self._clients["sns"]

    async def _run(self, steps: Steps[_T]) -> _T:
        """Perform ``steps`` (see :data:`~melange.backends.sqs.connection.Steps`) with the
        aiobotocore clients and return their result."""
        try:
            call: Call = next(steps)
            clients = await self._connect()
            while True:
                try:
                    answer = await getattr(clients[call.service], call.operation)(**call.params)
                except Exception as exc:
                    call = steps.throw(exc)
                else:
                    call = steps.send(answer)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        finally:
            steps.close()

    # -- topology ---------------------------------------------------------------------------

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the SNS topic if needed (a ``.fifo`` name makes a FIFO topic with
        content-based deduplication) and return it; its ARN is cached."""
        return await self._run(self._topology.declare_topic(topic_name))

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        """The existing topic; raises ``TopicNotFoundError`` when it does not exist."""
        return await self._run(self._topology.get_topic(topic_name))

    async def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic and its subscriptions (a missing topic is not an error)."""
        await self._run(self._topology.delete_topic(topic))

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        """The existing queue; raises ``QueueNotFoundError`` when SQS says it does not exist."""
        return await self._run(self._topology.get_queue(queue_name))

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or update the queue, its dead-letter queue and its subscriptions; the
        options are those of
        :meth:`AWSBackend.declare_queue <melange.backends.sqs.backend.AWSBackend.declare_queue>`
        (``filter_events``, ``raw_delivery``, ``max_receive_count``, ``attributes``...)."""
        return await self._run(
            self._topology.declare_queue(
                queue_name, *topics_to_bind, dead_letter_queue_name=dead_letter_queue_name, **kwargs
            )
        )

    async def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue and unsubscribe it from its topics (a missing queue is fine)."""
        await self._run(self._topology.delete_queue(queue))

    # -- publishing -------------------------------------------------------------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Send one message (one ``SendMessage`` request); ``delay_seconds=`` holds it back
        on standard queues (refused on FIFO queues), as on :class:`AWSBackend
        <melange.backends.sqs.backend.AWSBackend>`."""
        await self._run(self._publish_to_queue(message, queue, kwargs))

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Send messages with ``SendMessageBatch``, one request per ten (more when large);
        refused ones are reported together in a ``BatchPublishError``."""
        await self._run(self._publish_batch_to_queue(messages, queue, kwargs))

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """Publish one message to the SNS topic (one ``Publish`` request); SNS cannot delay
        it (``delay_seconds=`` raises ``ConfigurationError``)."""
        await self._run(self._publish_to_topic(message, topic, kwargs))

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish with SNS ``PublishBatch``, one request per ten messages (more when large);
        refused ones are reported together in a ``BatchPublishError``."""
        await self._run(self._publish_batch_to_topic(messages, topic, kwargs))

    # -- consuming --------------------------------------------------------------------------

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Long-poll the queue once and return up to ``max_messages`` (at most 10);
        ``wait_seconds`` and ``visibility_timeout`` as for ``AWSBackend``."""
        return await self._run(self._retrieve_messages(queue, kwargs))

    async def acknowledge(self, message: Message) -> None:
        """Delete the message from its queue (``DeleteMessage``)."""
        await self._run(self._acknowledge(message))

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete messages with ``DeleteMessageBatch``, one request per ten per queue."""
        await self._run(self._acknowledge_batch(messages))

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds (``ChangeMessageVisibility``)."""
        await self._run(self._change_visibility(message, delay, "releasing"))

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep the message hidden ``seconds`` more from now (at most 12 hours)."""
        await self._run(self._change_visibility(message, seconds, "extending the visibility of"))

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Copy the message, with ``headers``, to its queue's dead-letter queue and delete
        it; ``False`` when the queue has no redrive policy."""
        return await self._run(self._dead_letter(message, headers))

    # -- lifecycle --------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Does nothing, as for ``AWSBackend``: a stop waits for at most one long poll."""

    async def aclose(self) -> None:
        """Close both clients and their HTTP sessions. The backend may not be used again."""
        self._closed = True
        stack, self._stack, self._clients = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> AsyncAWSBackend:
        await self.connect()
        return self


class AsyncLocalSQSBackend(AsyncAWSBackend):
    """An SQS-compatible broker (ElasticMQ, LocalStack, moto) at ``host:port``, for asyncio
    code: the arguments of :class:`~melange.backends.sqs.localsqs.LocalSQSBackend`, with
    placeholder region and credentials unless given."""

    def __init__(
        self,
        host: str | None = "localhost",
        port: int | str | None = 9324,
        sns_host: str | None = None,
        sns_port: int | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**local_options(host, port, sns_host, sns_port, options))


__all__ = ["AsyncAWSBackend", "AsyncLocalSQSBackend"]
