"""Connecting to Kafka: the bootstrap servers, and the settings of librdkafka's clients.

Brokers are named by ``kafka://host:port,host:port`` (or a plain ``host:port,...`` list).
The producer is idempotent with ``acks=all`` (no duplicate and no reordering by the
producer's own retries, written to every in-sync replica); the consumers commit offsets
themselves, never automatically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import Producer

from melange.exceptions import ConfigurationError

logger = logging.getLogger("melange.backends.kafka")

DEFAULT_URL = "kafka://127.0.0.1:9092"
#: The partition assignor of every consumer, blocking (librdkafka) or asyncio (aiokafka).
ASSIGNOR = "roundrobin"
DEFAULT_PORT = 9092


def bootstrap_servers(url: str) -> str:
    """The ``bootstrap.servers`` of a ``kafka://host:port,host:port`` URL (or a bare list)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("no Kafka broker given, e.g. kafka://127.0.0.1:9092")
    text = url.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() != "kafka":
            raise ConfigurationError(f"a Kafka URL starts with kafka://, got {scheme!r}://")
        text = rest.split("/", 1)[0].split("?", 1)[0]
        if "@" in text:
            raise ConfigurationError(
                "a Kafka URL takes no credentials in the host part; pass SASL settings in "
                "client_config"
            )
    servers: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(f"//{item}")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ConfigurationError(f"Kafka broker {item!r} has a bad port: {exc}") from None
        if not parts.hostname:
            raise ConfigurationError(f"Kafka broker {item!r} has no host")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        servers.append(f"{host}:{port}")
    if not servers:
        raise ConfigurationError("no Kafka broker given, e.g. kafka://127.0.0.1:9092")
    return ",".join(servers)


@dataclass(frozen=True)
class ClientSettings:
    """What every client of one backend shares.

    Attributes:
        servers: ``bootstrap.servers``.
        idempotence: ``enable.idempotence`` of the producer.
        session_timeout: Seconds without a heartbeat after which the group coordinator takes
            a consumer's partitions away.
        max_poll_interval: Longest pause between two receives of a consumer before it is
            considered stuck and leaves its group.
        extra: Further librdkafka settings (security, SASL...), for every client.
    """

    servers: str
    idempotence: bool
    session_timeout: float
    max_poll_interval: float
    extra: Mapping[str, Any]

    def common(self) -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": self.servers, "log_level": 3}
        config.update(self.extra)
        return config

    def producer(self) -> dict[str, Any]:
        """An idempotent producer writing to every in-sync replica."""
        config = self.common()
        config.update(
            {
                "enable.idempotence": self.idempotence,
                "acks": "all",
                "linger.ms": 2,
            }
        )
        return config

    def consumer(self, group: str) -> dict[str, Any]:
        """A consumer of ``group`` that commits offsets only when told."""
        session_ms = round(self.session_timeout * 1000)
        config = self.common()
        config.update(
            {
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # A partition the group never committed on: the queue's own topic and its
                # retries, or a partition added later, so start at the beginning.
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
                "max.poll.interval.ms": max(session_ms, round(self.max_poll_interval * 1000)),
                # The assignor aiokafka has too, so that blocking and asyncio consumers can
                # share a queue's group (a group takes one protocol; aiokafka has no
                # cooperative one). Eager: a rebalance takes every partition away.
                "partition.assignment.strategy": ASSIGNOR,
                "isolation.level": "read_committed",
                # A subscribed topic created after the consumer started is seen this soon.
                "topic.metadata.refresh.interval.ms": 30000,
            }
        )
        return config

    def admin(self) -> dict[str, Any]:
        return self.common()


def check_settings(
    partitions: int,
    replication_factor: int,
    session_timeout: float,
    max_poll_interval: float,
    publish_timeout: float,
    rebalance_drain_timeout: float,
) -> None:
    """Refuse settings that cannot work (shared by both backends)."""
    if partitions < 1:
        raise ConfigurationError(f"partitions must be at least 1, got {partitions!r}")
    if replication_factor < 1:
        raise ConfigurationError(
            f"replication_factor must be at least 1, got {replication_factor!r}"
        )
    for name, value in (
        ("session_timeout", session_timeout),
        ("max_poll_interval", max_poll_interval),
        ("publish_timeout", publish_timeout),
    ):
        if not value > 0:
            raise ConfigurationError(f"{name} must be positive, got {value!r}")
    if max_poll_interval < session_timeout:
        raise ConfigurationError(
            f"max_poll_interval ({max_poll_interval}) must be at least session_timeout "
            f"({session_timeout})"
        )
    if rebalance_drain_timeout < 0:
        raise ConfigurationError(
            f"rebalance_drain_timeout must be >= 0, got {rebalance_drain_timeout!r}"
        )


def close_producer(producer: Producer, timeout: float) -> None:
    """Send what ``producer`` holds (``timeout`` seconds at most), then close it, which ends
    its threads: an open one goes on reconnecting to the brokers as long as it lives.

    What is left after ``timeout`` is dropped first (its publisher was already told it was
    not confirmed): closing would otherwise wait for it up to ``message.timeout.ms``.
    """
    if producer.flush(timeout):
        producer.purge()
        producer.flush(0)  # hands the dropped records' failures to their callbacks
    producer.close()


__all__ = [
    "ASSIGNOR",
    "DEFAULT_URL",
    "ClientSettings",
    "bootstrap_servers",
    "check_settings",
    "close_producer",
]
