"""The RabbitMQ backends (need the ``rabbitmq`` extra: ``pip install 'melange[rabbitmq]'``).

:class:`RabbitMQBackend` (pika, blocking) and :class:`AsyncRabbitMQBackend` (pika's asyncio
adapter) share topology and wire format: either consumes what the other published.

See :mod:`melange.backends.rabbitmq.backend` for how queues, topics, retries and dead letters
map onto RabbitMQ, :mod:`melange.backends.rabbitmq.topology` for the declarations, and
:mod:`melange.backends.rabbitmq.wire` for the message format.
"""

try:
    import pika  # noqa: F401 - checked here so every module of the package reports it clearly
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the RabbitMQ backend needs pika ({exc}): pip install 'melange[rabbitmq]'"
    ) from exc

from typing import TYPE_CHECKING, Any

from melange.backends.rabbitmq.backend import RabbitMQBackend

if TYPE_CHECKING:
    from melange.backends.rabbitmq.async_backend import AsyncRabbitMQBackend


def __getattr__(name: str) -> Any:
    # Imported on first use: code that never uses asyncio does not load it.
    if name == "AsyncRabbitMQBackend":
        from melange.backends.rabbitmq.async_backend import AsyncRabbitMQBackend

        return AsyncRabbitMQBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AsyncRabbitMQBackend", "RabbitMQBackend"]
