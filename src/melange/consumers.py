"""Consumers: the code that reacts to messages.

Subclass :class:`Consumer` and implement :meth:`Consumer.process` (and optionally
:meth:`Consumer.accepts`), pass callbacks to it, or subclass :class:`SingleDispatchConsumer`
and mark one method per message type with :func:`consumer` (alias :func:`listener`)::

    class PaymentConsumer(SingleDispatchConsumer):
        @consumer
        def on_order(self, event: OrderCreated) -> None: ...

Attach consumers to a :class:`~melange.message_dispatcher.MessageDispatcher`, which polls a
queue and hands each message to every consumer that accepts it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from melange.exceptions import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

_CONSUMER_MARK = "__melange_consumer__"


def _callable_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    name = f"{module}.{qualname}"
    if "<lambda>" in qualname or "<locals>" in qualname:
        # Anonymous and nested callables share a qualname; the line tells them apart.
        code = getattr(func, "__code__", None)
        if code is not None:
            name += f":{code.co_firstlineno}"
    return name


class Consumer:
    """Receives deserialized messages from a dispatcher.

    Args:
        on_message: Called with each accepted message, unless :meth:`process` is overridden.
        accepts: Predicate on the deserialized message; by default every message is accepted.
        name: Stable name of this consumer, used in deduplication keys and logs. It defaults to
            the class's qualified name (``module.Class``, the key 7.2.0 used) plus the callback's
            qualified name when one is given, so two consumers that share a class but not a
            callback never share deduplication entries. Give an explicit name when a consumer's
            code may move between modules but must keep its deduplication history.

    A message counts as processed when :meth:`process` returns; if it raises, the dispatcher
    logs the exception and the message is retried according to the failure policy.

    Note:
        ``accepts`` receives the deserialized message. Overrides written in the older style of
        the original documentation, ``def accepts(self, manifest)`` (first parameter named
        ``manifest``), are given the message's manifest instead.
    """

    def __init__(
        self,
        on_message: Callable[[Any], Any] | None = None,
        accepts: Callable[[Any], bool] | None = None,
        *,
        name: str | None = None,
        failure_policy: Any = None,
    ) -> None:
        self._on_message = on_message
        self._accepts = accepts
        cls = type(self)
        default = f"{cls.__module__}.{cls.__qualname__}"
        if on_message is not None:
            default += f"[{_callable_name(on_message)}]"
        self.name: str = name or default
        #: Overrides the dispatcher's failure policy for this consumer (``FailurePolicy``).
        self.failure_policy = failure_policy

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Handle one message. The default calls ``on_message`` and returns what it returns
        (an awaitable when it is ``async``: run such consumers with
        :class:`~melange.aio.AsyncMessageDispatcher`)."""
        if self._on_message is None:
            raise NotImplementedError(
                f"{type(self).__qualname__} has no on_message callback: pass one or override "
                "process()"
            )
        return self._on_message(message)

    def accepts(self, message: Any) -> bool:
        """Whether this consumer wants ``message``. The default uses the ``accepts`` callback."""
        if self._accepts is None:
            return True
        return bool(self._accepts(message))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r}>"


def consumer(func: F) -> F:
    """Mark a method of a :class:`SingleDispatchConsumer` as the handler of one message type.

    The type is taken from the annotation of the method's message parameter.
    """
    setattr(func, _CONSUMER_MARK, True)
    return func


#: The name the original documentation uses for :func:`consumer`.
listener = consumer


class SingleDispatchConsumer(Consumer):
    """A consumer with one method per message type, chosen by the type of the message.

    Mark methods with :func:`consumer`; the annotation of their message parameter is the type
    they handle. A message is accepted when its type, or one of its base classes, has a
    handler; the most specific handler runs.
    """

    _handler_names: typing.ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = list(cls._handler_names)
        for attr, value in vars(cls).items():
            if callable(value) and getattr(value, _CONSUMER_MARK, False) and attr not in names:
                names.append(attr)
        cls._handler_names = tuple(names)
        cls._handlers_cache = None

    _handlers_cache: typing.ClassVar[dict[type, str] | None] = None

    def __init__(self, *, name: str | None = None, failure_policy: Any = None) -> None:
        super().__init__(name=name, failure_policy=failure_policy)
        self._resolved: dict[type, str | None] = {}

    @classmethod
    def _handlers(cls) -> dict[type, str]:
        # Resolved lazily so annotations may name classes defined after the consumer.
        if cls._handlers_cache is None:
            table: dict[type, str] = {}
            for attr in cls._handler_names:
                func = getattr(cls, attr)
                table[_message_type(cls, attr, func)] = attr
            cls._handlers_cache = table
        return cls._handlers_cache

    def _handler_for(self, message: Any) -> str | None:
        cls = type(message)
        if cls in self._resolved:
            return self._resolved[cls]
        handlers = self._handlers()
        found = None
        for base in cls.__mro__:
            if base in handlers:
                found = handlers[base]
                break
        self._resolved[cls] = found
        return found

    def accepts(self, message: Any) -> bool:
        return self._handler_for(message) is not None

    def process(self, message: Any, **kwargs: Any) -> Any:
        attr = self._handler_for(message)
        if attr is None:
            raise TypeError(f"{type(self).__qualname__} has no handler for {type(message)!r}")
        return getattr(self, attr)(message)


class DuckTypedConsumer(Consumer):
    """A consumer that is not a :class:`Consumer` subclass, as 7.2.0 accepted (and as its
    users' test doubles are): an object with ``process(message)`` and, optionally,
    ``accepts(message)`` (every message when it has none), ``name`` and ``failure_policy``.

    Build it with :func:`as_consumer`.
    """

    def __init__(self, target: Any) -> None:
        name = getattr(target, "name", None)
        if not isinstance(name, str) or not name:
            cls = type(target)
            name = f"{cls.__module__}.{cls.__qualname__}"
        super().__init__(name=name, failure_policy=getattr(target, "failure_policy", None))
        self.target = target

    def process(self, message: Any, **kwargs: Any) -> Any:
        return self.target.process(message, **kwargs)

    def accepts(self, message: Any) -> bool:
        accepts = getattr(self.target, "accepts", None)
        return True if accepts is None else bool(accepts(message))

    def __repr__(self) -> str:
        return f"<DuckTypedConsumer {self.target!r}>"


def as_consumer(candidate: Any) -> Consumer:
    """``candidate`` as a :class:`Consumer`: itself when it is one, else a
    :class:`DuckTypedConsumer` around it when it has a ``process`` method.

    Raises ``TypeError`` naming what is wrong otherwise.
    """
    if isinstance(candidate, Consumer):
        return candidate
    if not callable(getattr(candidate, "process", None)):
        raise TypeError(
            "expected a melange Consumer, or an object with a process(message) method, got "
            f"{type(candidate).__name__}: {candidate!r}"
        )
    accepts = getattr(candidate, "accepts", None)
    if accepts is not None and not callable(accepts):
        raise TypeError(
            f"the consumer {type(candidate).__name__}'s accepts is not callable: {accepts!r}"
        )
    return DuckTypedConsumer(candidate)


def _message_type(owner: type, attr: str, func: Callable[..., Any]) -> type:
    params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
    where = f"{owner.__qualname__}.{attr}"
    if not params:
        raise ConfigurationError(f"@consumer method {where} takes no message parameter")
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    annotation = hints.get(params[0].name, params[0].annotation)
    origin = typing.get_origin(annotation)
    if origin is not None and isinstance(origin, type):
        annotation = origin
    if not isinstance(annotation, type) or annotation is inspect.Parameter.empty:
        raise ConfigurationError(
            f"@consumer method {where} needs a class annotation on parameter "
            f"{params[0].name!r} to know which messages it handles (got {annotation!r})"
        )
    return annotation


def is_coroutine_consumer(consumer_obj: Consumer, message: Any) -> bool:
    """Whether handling ``message`` with ``consumer_obj`` runs a coroutine function (so an
    asyncio dispatcher awaits it on the loop instead of running it on a worker thread)."""
    process = type(consumer_obj).process
    handler: Any
    if process is Consumer.process:
        handler = consumer_obj._on_message
    elif process is SingleDispatchConsumer.process and isinstance(
        consumer_obj, SingleDispatchConsumer
    ):
        attr = consumer_obj._handler_for(message)
        handler = getattr(consumer_obj, attr) if attr is not None else None
    elif isinstance(consumer_obj, DuckTypedConsumer):
        handler = getattr(consumer_obj.target, "process", None)
    else:
        handler = consumer_obj.process
    if handler is None:
        return False
    if inspect.iscoroutinefunction(handler):
        return True
    # A callable object with an ``async def __call__``, or a partial of a coroutine function.
    inner = getattr(handler, "func", None) or getattr(handler, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(inner)


def has_coroutine_handlers(consumer_obj: Consumer) -> bool:
    """Whether any message ``consumer_obj`` handles runs a coroutine function."""
    if isinstance(consumer_obj, SingleDispatchConsumer) and (
        type(consumer_obj).process is SingleDispatchConsumer.process
    ):
        return any(
            inspect.iscoroutinefunction(getattr(consumer_obj, name))
            for name in consumer_obj._handler_names
        )
    return is_coroutine_consumer(consumer_obj, None)


def _wants_manifest(consumer_obj: Consumer) -> bool:
    """True for ``accepts(self, manifest)`` overrides written in the original docs' style."""
    method: Any = type(consumer_obj).accepts
    if isinstance(consumer_obj, DuckTypedConsumer):
        method = getattr(consumer_obj.target, "accepts", None)
        if method is None:
            return False
    if method in (Consumer.accepts, SingleDispatchConsumer.accepts):
        return False
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # a callable without a signature (a C function, a double)
        return False
    params = [p for p in signature.parameters.values() if p.name != "self"]
    return bool(params) and params[0].name == "manifest"


def __getattr__(name: str) -> Any:
    # The dispatchers are importable from here too, as the original documentation shows;
    # imported lazily because the dispatcher module imports this one.
    if name in {"MessageDispatcher", "SimpleMessageDispatcher", "ConsumerHandler"}:
        from melange import message_dispatcher

        return getattr(message_dispatcher, name)
    raise AttributeError(f"module 'melange.consumers' has no attribute {name!r}")


__all__ = [
    "Consumer",
    "SingleDispatchConsumer",
    "consumer",
    "listener",
]
