"""The Kafka backends (need the ``kafka`` extra: ``pip install 'melange[kafka]'``).

:class:`KafkaBackend` (confluent-kafka, blocking) and :class:`AsyncKafkaBackend` (aiokafka,
asyncio) share the same layout on the brokers: either consumes what the other published.
URL: ``kafka://host:9092,host:9092`` (see :mod:`melange.backends.urls`).

- :mod:`~melange.backends.kafka.backend`: the blocking backend, and how Melange's model maps
  onto Kafka.
- :mod:`~melange.backends.kafka.async_backend`: the asyncio backend.
- :mod:`~melange.backends.kafka.topology`: topic names, the catalogue of queues and topics.
- :mod:`~melange.backends.kafka.admin`: creating topics, the catalogue, group offsets.
- :mod:`~melange.backends.kafka.reader`: a queue's consumer, and rebalances.
- :mod:`~melange.backends.kafka.async_reader`: the same on aiokafka.
- :mod:`~melange.backends.kafka.ledger`: records held between fetch and commit.
- :mod:`~melange.backends.kafka.wire`: messages as records, and receipts.
- :mod:`~melange.backends.kafka.connection`: brokers and client settings.
- :mod:`~melange.backends.kafka.inspect`: :class:`QueueStats` and peeked copies.
"""

try:
    import confluent_kafka  # noqa: F401 - checked here so every module of the package reports it
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the Kafka backend needs confluent-kafka ({exc}): pip install 'melange[kafka]'"
    ) from exc

from typing import TYPE_CHECKING, Any

from melange.backends.kafka.backend import KafkaBackend
from melange.backends.kafka.inspect import QueueStats

if TYPE_CHECKING:
    from melange.backends.kafka.async_backend import AsyncKafkaBackend


def __getattr__(name: str) -> Any:
    # AsyncKafkaBackend needs aiokafka: imported when asked for, so that KafkaBackend works
    # with confluent-kafka alone.
    if name == "AsyncKafkaBackend":
        from melange.backends.kafka.async_backend import AsyncKafkaBackend

        return AsyncKafkaBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AsyncKafkaBackend", "KafkaBackend", "QueueStats"]
