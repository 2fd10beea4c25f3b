"""Compatibility module: the names that were importable from here before the backend was split.

The backend lives in :mod:`melange.backends.rabbitmq.backend` (the pika backend),
:mod:`melange.backends.rabbitmq.topology` (queue naming, arguments, retry queues, dead-letter
wiring), :mod:`melange.backends.rabbitmq.connection` (connection parameters),
:mod:`melange.backends.rabbitmq.io_thread` (the I/O thread),
:mod:`melange.backends.rabbitmq.session` (channels, receipts, settling) and
:mod:`melange.backends.rabbitmq.wire` (the message format).
"""

from __future__ import annotations

from melange.backends.rabbitmq.backend import RabbitMQBackend
from melange.backends.rabbitmq.session import RabbitMQReceipt
from melange.backends.rabbitmq.topology import (
    DEAD_LETTER_EXCHANGE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DELAY_LADDER_MS,
    delay_bucket_ms,
    retry_queue_name,
)

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DELAY_LADDER_MS",
    "RabbitMQBackend",
    "RabbitMQReceipt",
    "delay_bucket_ms",
    "retry_queue_name",
]
