"""What the RabbitMQ backends declare, and what the broker's answers mean, without any I/O.

Both the pika backend and the asyncio backend perform the same declarations: this module
decides them. :func:`plan_queue` turns a queue name, its options and the topics it is bound
to into plain data (exchanges, queues with their arguments, bindings); the ``*_steps``
generators walk such plans as AMQP operations (:class:`DeclareQueue`, :class:`Bind`, ...),
receive the broker's answer to each (``None``, or the :class:`Refusal` that closed the channel)
and decide what follows: adopt an existing queue with a warning, try the other queue type, or
raise a clear error. A backend only translates operations into client calls and channel
closures into refusals (see :func:`drive`), so no topology rule exists twice.

The queue naming, the retry ladder and the rules for handing a message back (:func:`give_back`)
live here too; the message format is in :mod:`melange.backends.rabbitmq.wire`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from melange.backends.amqp import refuse_fifo_publish, refuse_fifo_queue
from melange.backends.interfaces import DEFAULT_MAX_RECEIVE_COUNT
from melange.backends.names import check_amqp_name, check_amqp_queue_name, check_amqp_topic_name
from melange.backends.numbers import check_number
from melange.exceptions import (
    BatchPublishError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message

logger = logging.getLogger("melange.backends.rabbitmq")

#: The direct exchange that routes dead-lettered messages to dead-letter queues.
DEAD_LETTER_EXCHANGE = "melange.dlx"

#: RabbitMQ's default largest message (``max_message_size``), in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024

#: Retry delays, in milliseconds, that ``nack`` rounds to (beyond the last: whole hours).
DELAY_LADDER_MS = (
    100,
    200,
    300,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    10_000,
    20_000,
    30_000,
    60_000,
    120_000,
    180_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
)

#: Options ``declare_queue`` accepts.
QUEUE_OPTIONS = frozenset(
    {"filter_events", "max_receive_count", "visibility_timeout", "queue_type", "arguments", "fifo"}
)

#: AMQP reply codes the backends interpret.
ACCESS_REFUSED = 403
NOT_FOUND = 404
PRECONDITION_FAILED = 406

T = TypeVar("T")


# -- names and arguments ---------------------------------------------------------------------


def delay_bucket_ms(delay: float) -> int:
    """The retry delay, in milliseconds, that ``nack(message, delay)`` uses."""
    ms = max(1.0, delay * 1000.0)
    if ms > DELAY_LADDER_MS[-1]:
        return int(math.ceil(ms / 3_600_000) * 3_600_000)
    return min(DELAY_LADDER_MS, key=lambda step: abs(math.log(step / ms)))


def publish_delay_ms(delay: float) -> int:
    """The hold, in milliseconds, of a message published with ``delay_seconds=delay``: the
    first step of :data:`DELAY_LADDER_MS` that is not shorter (beyond the last, whole hours),
    so that a message is never delivered before its delay, and waits in a retry queue shared
    with the retries of the same delay."""
    ms = max(1.0, delay * 1000.0)
    for step in DELAY_LADDER_MS:
        if step >= ms:
            return step
    return int(math.ceil(ms / 3_600_000) * 3_600_000)


def topic_delay_queue_name(topic_name: str, delay_ms: int) -> str:
    """Name of the queue that holds messages for ``topic_name`` for ``delay_ms``."""
    return f"{topic_name}.melange-topic-delay-{delay_ms}ms"


def topic_delay_arguments(topic_name: str, delay_ms: int) -> dict[str, Any]:
    """The arguments of the queue that holds messages for the topic ``topic_name``.

    When they expire, they are dead-lettered into the topic's exchange, which routes them by
    their headers as if they had just been published. At-most-once dead-lettering: a message
    no subscribed queue accepts by then is dropped, as an undelayed one would be (at-least-once
    would keep it forever).
    """
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": topic_name,
        "x-dead-letter-routing-key": "",
    }


def retry_queue_name(queue_name: str, delay_ms: int) -> str:
    """Name of the retry queue that holds messages of ``queue_name`` for ``delay_ms``."""
    return f"{queue_name}.melange-retry-{delay_ms}ms"


def expiring_retry_queue_name(queue_name: str, delay_ms: int) -> str:
    """Name of a retry queue of earlier versions, declared with a lease (``x-expires``).

    Deleted with its queue too, and otherwise left to expire once it has drained.
    """
    return f"{queue_name}.melange-delay-{delay_ms}ms"


def check_queue_type(queue_type: object) -> None:
    """Raise ``ConfigurationError`` unless ``queue_type`` is ``"quorum"`` or ``"classic"``."""
    if queue_type not in ("quorum", "classic"):
        raise ConfigurationError(f"queue_type must be 'quorum' or 'classic', got {queue_type!r}")


def check_backend_settings(
    queue_type: str | None,
    prefetch_count: int,
    operation_timeout: float = 30.0,
    consumer_idle_timeout: float = 60.0,
) -> None:
    """The checks both RabbitMQ backends make of their settings (finite, in range)."""
    if queue_type is not None:
        check_queue_type(queue_type)
    check_number("prefetch_count", prefetch_count, minimum=1, integer=True)
    check_number("operation_timeout", operation_timeout, positive=True)
    check_number("consumer_idle_timeout", consumer_idle_timeout, positive=True)


def type_arguments(queue_type: str) -> dict[str, Any]:
    """The arguments that make a queue of ``queue_type``."""
    # Classic queues are declared without x-queue-type so that queues created by other tools
    # (which usually omit it) are equivalent.
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def retry_arguments(queue_name: str, delay_ms: int) -> dict[str, Any]:
    """The arguments of the retry queue holding messages of ``queue_name`` for ``delay_ms``."""
    return {
        # Quorum, with at-least-once dead-lettering: a message waiting for its retry is
        # replicated, and moving it back to its queue cannot lose it.
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue_name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        # No x-expires: a queue lease deletes the messages waiting in the queue with it.
    }


# -- queue options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueOptions:
    """The validated options of a ``declare_queue`` call."""

    requested_type: str | None
    max_receive_count: int
    explicit_max_receive_count: bool
    manifests: tuple[str, ...]
    extra_arguments: Mapping[str, Any]
    ignored_visibility_timeout: bool

    def queue_arguments(
        self, queue_name: str, queue_type: str, dead_letter_queue: str | None
    ) -> dict[str, Any]:
        """The arguments of ``queue_name`` declared as ``queue_type``."""
        arguments = type_arguments(queue_type)
        if dead_letter_queue is not None:
            arguments["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE
            arguments["x-dead-letter-routing-key"] = queue_name
            if queue_type == "quorum":
                # delivery-limit counts *failed* deliveries: N-1 of them allow N deliveries.
                arguments["x-delivery-limit"] = self.max_receive_count - 1
                # Without these the broker may drop a message while dead-lettering it.
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        arguments.update(self.extra_arguments)
        return arguments


def queue_options(
    queue_name: str,
    options: Mapping[str, Any],
    default_type: str | None,
    dead_letter_queue: str | None,
) -> QueueOptions:
    """Validate the name and options of ``declare_queue`` (raises ``ConfigurationError``)."""
    check_amqp_queue_name(queue_name)
    if dead_letter_queue is not None:
        check_amqp_queue_name(dead_letter_queue, "dead-letter queue")
    unknown = set(options) - QUEUE_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {sorted(unknown)} for RabbitMQ queue {queue_name!r}; "
            f"known: {sorted(QUEUE_OPTIONS)}"
        )
    refuse_fifo_queue(queue_name, options, backend="RabbitMQ")
    requested = options.get("queue_type", default_type)
    if requested is not None:
        check_queue_type(requested)
    max_receive = int(
        check_number(
            "max_receive_count",
            options.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT),
            minimum=1,
            integer=True,
        )
    )
    if "visibility_timeout" in options:
        # Ignored by RabbitMQ, but a value no other backend would take is still a mistake.
        check_number("visibility_timeout", options["visibility_timeout"], positive=True)
    filter_events = options.get("filter_events")
    if isinstance(filter_events, str):
        raise ConfigurationError(
            f"filter_events must be a list of manifests, got the string {filter_events!r}"
        )
    if dead_letter_queue is not None and dead_letter_queue == queue_name:
        raise ConfigurationError(f"queue {queue_name!r} cannot be its own dead-letter queue")
    return QueueOptions(
        requested_type=requested,
        max_receive_count=max_receive,
        explicit_max_receive_count="max_receive_count" in options,
        manifests=tuple(dict.fromkeys(filter_events or ())),
        extra_arguments=dict(options.get("arguments") or {}),
        ignored_visibility_timeout="visibility_timeout" in options,
    )


# -- operations (what a backend performs) ------------------------------------------------------


@dataclass(frozen=True)
class DeclareExchange:
    """``exchange.declare``, durable (``passive``: only check that it exists)."""

    name: str
    type: str = "headers"
    passive: bool = False


@dataclass(frozen=True)
class DeclareQueue:
    """``queue.declare``, durable (``passive``: only check that it exists)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    passive: bool = False


@dataclass(frozen=True)
class Bind:
    """``queue.bind``."""

    queue: str
    exchange: str
    routing_key: str = ""
    arguments: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Unbind:
    """``queue.unbind``."""

    queue: str
    exchange: str
    routing_key: str = ""
    arguments: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DeleteQueue:
    """``queue.delete`` (no error when it does not exist)."""

    name: str


@dataclass(frozen=True)
class DeleteExchange:
    """``exchange.delete``."""

    name: str


Operation = DeclareExchange | DeclareQueue | Bind | Unbind | DeleteQueue | DeleteExchange


@dataclass(frozen=True)
class Refusal:
    """The broker closed the channel instead of performing an operation.

    ``error`` is the client's exception, raised as it is when no rule explains the refusal.
    """

    code: int
    text: str
    error: BaseException

    def reraise(self) -> NoReturn:
        raise self.error


#: Operations to perform; each ``yield`` receives ``None`` or the :class:`Refusal`.
Steps = Generator[Operation, Refusal | None, T]


def drive(steps: Steps[T], perform: Any) -> T:
    """Run ``steps`` with ``perform(operation) -> Refusal | None`` (a blocking client)."""
    try:
        operation = next(steps)
        while True:
            operation = steps.send(perform(operation))
    except StopIteration as stop:
        result: T = stop.value
        return result


# -- plans -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDeclaration:
    """A durable queue to declare.

    ``arguments`` holds its arguments for each queue type. Without a ``requested`` type a new
    queue gets ``same_type_as``'s type (when that queue was declared before) or is a quorum
    queue, and with ``adopt`` an existing queue keeps its type. With ``keep_delivery_limit``
    an existing queue whose delivery limit differs is used as it is, with a warning.
    """

    name: str
    what: str
    arguments: Mapping[str, Mapping[str, Any]]
    requested: str | None = None
    adopt: bool = True
    keep_delivery_limit: bool = False
    same_type_as: str | None = None


@dataclass(frozen=True)
class BindingDeclaration:
    """Bind ``queue`` to the topic ``topic``, for ``manifests`` only when there are any."""

    queue: str
    topic: str
    manifests: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeadLetterRoute:
    """Bind the dead-letter queue ``queue`` to the dead-letter exchange for ``source``."""

    queue: str
    source: str


Declaration = DeclareExchange | QueueDeclaration | DeadLetterRoute | BindingDeclaration


def plan_queue(
    queue_name: str,
    options: QueueOptions,
    dead_letter_queue: str | None,
    topics: Sequence[str],
) -> list[Declaration]:
    """The declarations that make ``queue_name`` (and its dead-letter queue) as asked."""
    requested = options.requested_type
    arguments = {
        queue_type: options.queue_arguments(queue_name, queue_type, dead_letter_queue)
        for queue_type in ("quorum", "classic")
    }
    plan: list[Declaration] = []
    if dead_letter_queue is not None:
        plan.append(DeclareExchange(DEAD_LETTER_EXCHANGE, "direct"))
    plan.append(
        QueueDeclaration(
            queue_name,
            f"queue {queue_name!r}",
            arguments,
            requested=requested,
            adopt=requested is None,
            keep_delivery_limit=not options.explicit_max_receive_count,
        )
    )
    if dead_letter_queue is not None:
        # The dead-letter queue gets the type of its queue unless it exists already.
        plan.append(
            QueueDeclaration(
                dead_letter_queue,
                f"dead-letter queue {dead_letter_queue!r}",
                {queue_type: type_arguments(queue_type) for queue_type in ("quorum", "classic")},
                requested=requested,
                adopt=requested is None,
                same_type_as=queue_name,
            )
        )
        plan.append(DeadLetterRoute(dead_letter_queue, queue_name))
    plan.extend(BindingDeclaration(queue_name, topic, options.manifests) for topic in topics)
    return plan


def declare_steps(plan: Sequence[Declaration]) -> Steps[dict[str, str]]:
    """Perform ``plan``; returns the type each declared queue has."""
    types: dict[str, str] = {}
    for declaration in plan:
        if isinstance(declaration, DeclareExchange):
            refusal = yield declaration
            if refusal is not None:
                raise_declare_error(refusal, f"exchange {declaration.name!r}")
        elif isinstance(declaration, QueueDeclaration):
            types[declaration.name] = yield from queue_declaration_steps(declaration, types)
        elif isinstance(declaration, DeadLetterRoute):
            refusal = yield Bind(declaration.queue, DEAD_LETTER_EXCHANGE, declaration.source)
            if refusal is not None:
                refusal.reraise()
        else:
            yield from binding_steps(declaration)
    return types


def queue_declaration_steps(declaration: QueueDeclaration, types: Mapping[str, str]) -> Steps[str]:
    """Declare one queue, adopting or refusing an existing one; returns the type it has."""
    name, what = declaration.name, declaration.what
    queue_type = (
        declaration.requested
        or (types.get(declaration.same_type_as) if declaration.same_type_as else None)
        or "quorum"
    )
    refusal = yield DeclareQueue(name, declaration.arguments[queue_type])
    if refusal is None:
        return queue_type
    decision = on_queue_refused(declaration, queue_type, refusal)
    if decision == "keep":
        logger.warning(
            "%s exists with another delivery limit; using it as it is (%s). Recreate it, "
            "or pass its max_receive_count, to change it",
            what,
            refusal.text,
        )
        refusal = yield DeclareQueue(name, passive=True)
        if refusal is not None:
            refusal.reraise()
        return queue_type
    other = decision
    logger.info("%s exists as a %s queue; using it as such", what, other)
    refusal = yield DeclareQueue(name, declaration.arguments[other])
    if refusal is not None:
        raise_queue_error(refusal, what, other)
    return other


def on_queue_refused(declaration: QueueDeclaration, queue_type: str, refusal: Refusal) -> str:
    """What to do when declaring a queue as ``queue_type`` was refused.

    Returns ``"keep"`` (use the existing queue as it is: only its delivery limit differs) or
    the other queue type to declare it as (it exists with that type, and may be adopted);
    raises a clear error otherwise.
    """
    precondition = refusal.code == PRECONDITION_FAILED
    if declaration.keep_delivery_limit and precondition and "x-delivery-limit" in refusal.text:
        return "keep"
    if declaration.adopt and precondition and "x-queue-type" in refusal.text:
        return "classic" if queue_type == "quorum" else "quorum"
    raise_queue_error(refusal, declaration.what, queue_type)


def raise_queue_error(refusal: Refusal, what: str, queue_type: str) -> NoReturn:
    """Raise the error for a refused queue declaration (``ConfigurationError`` for 406)."""
    if refusal.code != PRECONDITION_FAILED:
        refusal.reraise()
    hint = "Declare it with the settings it has, or delete it first (its messages are lost then)"
    if "x-queue-type" in refusal.text:
        hint = (
            f"It was declared here as a {queue_type} queue; pass the queue_type it has, or "
            "leave queue_type unset to use existing queues as they are"
        )
    raise ConfigurationError(
        f"{what} already exists with different settings: {refusal.text}. {hint}"
    ) from None


def raise_declare_error(refusal: Refusal, what: str) -> NoReturn:
    """Raise the error for a refused declaration (``ConfigurationError`` for 406)."""
    if refusal.code == PRECONDITION_FAILED:
        raise ConfigurationError(
            f"{what} already exists with different settings: {refusal.text}. Declare it "
            "with the settings it has, or delete it first"
        ) from None
    refusal.reraise()


def binding_steps(binding: BindingDeclaration) -> Steps[None]:
    """Bind a queue to a topic; raises ``TopicNotFoundError`` when the topic is missing."""
    operations: list[Operation] = []
    if binding.manifests:
        # A catch-all binding from an earlier declaration would defeat the filter.
        operations.append(Unbind(binding.queue, binding.topic, arguments={"x-match": "all"}))
        operations.extend(
            Bind(binding.queue, binding.topic, arguments={"x-match": "all", "manifest": manifest})
            for manifest in binding.manifests
        )
    else:
        operations.append(Bind(binding.queue, binding.topic, arguments={"x-match": "all"}))
    for operation in operations:
        refusal = yield operation
        if refusal is not None:
            if refusal.code == NOT_FOUND:
                raise TopicNotFoundError(binding.topic) from None
            refusal.reraise()


def declare_topic_steps(topic_name: str) -> Steps[None]:
    """Declare the durable ``headers`` exchange of a topic."""
    check_amqp_topic_name(topic_name)
    refusal = yield DeclareExchange(topic_name, "headers")
    if refusal is not None:
        raise_declare_error(refusal, f"topic {topic_name!r}")


def exists_steps(operation: DeclareQueue | DeclareExchange) -> Steps[bool]:
    """Whether the queue or exchange of a passive declaration exists."""
    # A name the broker cannot parse would leave the declaration unanswered.
    check_amqp_name("queue" if isinstance(operation, DeclareQueue) else "topic", operation.name)
    refusal = yield operation
    if refusal is None:
        return True
    if refusal.code == NOT_FOUND:
        return False
    refusal.reraise()


def retry_queue_steps(queue_name: str, delay_ms: int) -> Steps[str]:
    """Declare the retry queue of ``queue_name`` for ``delay_ms``; returns its name."""
    target = retry_queue_name(queue_name, delay_ms)
    refusal = yield DeclareQueue(target, retry_arguments(queue_name, delay_ms))
    if refusal is not None:
        raise_declare_error(refusal, f"retry queue {target!r}")
    return target


def delete_queue_steps(queue_name: str, extra_delays_ms: Sequence[int] = ()) -> Steps[None]:
    """Delete a queue and its retry queues (not its dead-letter queue)."""
    operations: list[Operation] = [DeleteQueue(queue_name)]
    # Messages waiting to be retried have nowhere to go back to any more.
    for step in sorted({*DELAY_LADDER_MS, *extra_delays_ms}):
        operations.append(DeleteQueue(retry_queue_name(queue_name, step)))
        operations.append(DeleteQueue(expiring_retry_queue_name(queue_name, step)))
    for operation in operations:
        refusal = yield operation
        if refusal is not None:
            refusal.reraise()


def topic_delay_steps(topic_name: str, delay_ms: int) -> Steps[str]:
    """Declare the queue holding messages for ``topic_name`` for ``delay_ms``; returns its
    name."""
    target = topic_delay_queue_name(topic_name, delay_ms)
    refusal = yield DeclareQueue(target, topic_delay_arguments(topic_name, delay_ms))
    if refusal is not None:
        raise_declare_error(refusal, f"delay queue {target!r}")
    return target


def delete_topic_steps(topic_name: str, extra_delays_ms: Sequence[int] = ()) -> Steps[None]:
    """Delete the exchange of a topic and the queues holding its delayed messages."""
    refusal = yield DeleteExchange(topic_name)
    if refusal is not None:
        refusal.reraise()
    for step in sorted({*DELAY_LADDER_MS, *extra_delays_ms}):
        refusal = yield DeleteQueue(topic_delay_queue_name(topic_name, step))
        if refusal is not None:
            refusal.reraise()


def refuse_fifo(destination: str, messages: Sequence[Message], kwargs: Mapping[str, Any]) -> None:
    """RabbitMQ has no FIFO queues here: a publish that asks for FIFO semantics (a ``.fifo``
    queue, a group id, a deduplication id) is refused rather than delivered without them."""
    refuse_fifo_publish(destination, messages, kwargs, backend="RabbitMQ")


# -- settling and publishing -----------------------------------------------------------------


@dataclass(frozen=True)
class GiveBack:
    """How a message goes back to its queue: republished, with ``deliveries`` recorded.

    ``delay_ms`` is 0 for at once (``target`` is the queue itself), else the retry queue's
    delay (``target`` is then the retry queue, to declare first).
    """

    queue: str
    target: str
    delay_ms: int
    deliveries: int


def give_back(queue_name: str, message: Message, delay: float, failed: bool) -> GiveBack:
    """The republish that hands ``message`` back after ``delay`` seconds.

    A failed attempt (``nack``) records one more failed attempt in the
    ``melange_deliveries`` header; a release records the attempts it had.
    """
    attempt = message.attempt or 1
    deliveries = attempt if failed else attempt - 1
    delay_ms = delay_bucket_ms(delay) if delay > 0 else 0
    target = retry_queue_name(queue_name, delay_ms) if delay_ms else queue_name
    return GiveBack(queue_name, target, delay_ms, deliveries)


def ack_plan(unacked: set[int], tags: Sequence[int]) -> tuple[int, bool, list[int]]:
    """How to acknowledge ``tags`` of one channel whose unsettled tags are ``unacked``.

    Returns ``(highest, True, tags)`` when one ``multiple`` acknowledgement of the highest
    tag settles exactly ``tags`` (every outstanding tag up to it is in the batch), else
    ``(0, False, tags)``: one acknowledgement per tag. ``tags`` come back sorted, deduplicated.
    """
    ordered = sorted(set(tags))
    highest = ordered[-1]
    if len(ordered) > 1 and sum(1 for tag in unacked if tag <= highest) == len(ordered):
        return highest, True, ordered
    return 0, False, ordered


def check_queue_publish(
    outcome: Sequence[str | None], queue_name: str, batch: bool
) -> QueueNotFoundError | None:
    """Interpret per-message refusals of a queue publish.

    Returns ``QueueNotFoundError`` when every message was unroutable (the queue is gone);
    raises ``BatchPublishError``/``PublishError`` for other refusals.
    """
    failures = {i: reason for i, reason in enumerate(outcome) if reason is not None}
    if not failures:
        return None
    if len(failures) == len(outcome) and all("NO_ROUTE" in r for r in failures.values()):
        return QueueNotFoundError(queue_name)
    if batch:
        raise BatchPublishError(failures)
    raise PublishError(f"RabbitMQ refused the message for queue {queue_name!r}: {failures[0]}")


def check_topic_publish(
    outcome: Sequence[str | None], messages: Sequence[Message], topic_name: str, batch: bool
) -> None:
    """Interpret per-message refusals of a topic publish (raises on any)."""
    failures: dict[int, str] = {}
    for index, reason in enumerate(outcome):
        if reason is None:
            continue
        if "NO_ROUTE" in reason:
            manifest = messages[index].manifest
            reason = f"no queue subscribed to topic {topic_name!r} accepts manifest {manifest!r}"
        failures[index] = reason
    if not failures:
        return
    if batch:
        raise BatchPublishError(failures)
    raise PublishError(failures[0])


def dead_letter_routed(refused: str | None, message_id: str) -> bool:
    """Whether a dead-letter publish landed; ``False`` when no dead-letter queue is bound."""
    if refused is None:
        return True
    if "NO_ROUTE" in refused:
        return False
    raise PublishError(f"dead-lettering message {message_id}: {refused}")


def publish_refused(code: int, text: str, target: str) -> PublishError:
    """The broker closed the publishing channel (e.g. a message over its size limit)."""
    return PublishError(f"RabbitMQ refused the publish to {target}: {code} {text}")


__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DELAY_LADDER_MS",
    "QueueOptions",
    "delay_bucket_ms",
    "plan_queue",
    "publish_delay_ms",
    "queue_options",
    "refuse_fifo",
    "retry_arguments",
    "retry_queue_name",
    "topic_delay_queue_name",
]
