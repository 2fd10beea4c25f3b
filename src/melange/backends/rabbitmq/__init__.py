"""The RabbitMQ backend (needs the ``rabbitmq`` extra: ``pip install 'melange[rabbitmq]'``).

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

from melange.backends.rabbitmq.backend import RabbitMQBackend

__all__ = ["RabbitMQBackend"]
