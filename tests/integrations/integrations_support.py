"""What the framework integration tests share (a uniquely named module, not ``conftest``)."""

from __future__ import annotations

#: The local RabbitMQ broker the tests use.
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
