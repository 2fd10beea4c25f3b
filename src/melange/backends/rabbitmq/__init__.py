"""The RabbitMQ backend (needs the ``rabbitmq`` extra: ``pip install 'melange[rabbitmq]'``).

See :mod:`melange.backends.rabbitmq.rabbitmq_backend` for how queues, topics, retries and
dead letters map onto RabbitMQ, and :mod:`melange.backends.rabbitmq.wire` for the message
format.
"""

from melange.backends.rabbitmq.rabbitmq_backend import RabbitMQBackend

__all__ = ["RabbitMQBackend"]
