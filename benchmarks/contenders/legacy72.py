"""The released melange 7.2.0 on SQS, run under its own interpreter.

7.2.0 does not install on Python 3.11 with its declared dependencies, so the harness builds
a separate virtual environment for it (see :mod:`benchmarks.legacy_env`) and runs this
module there. It has no batch publish and acknowledges each message with its own delete, as
released; its consume loop never returns, so the operation ends it from ``after_consume``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from benchmarks.contenders.sqs import IDLE_TIMEOUT, _Counted, client_settings
from benchmarks.workload import Payload, Tally


class _Enough(Exception):
    """Raised from ``after_consume`` to leave 7.2.0's endless consume loop."""


class Melange72SQS(_Counted):
    """melange 7.2.0: QueuePublisher and SimpleMessageDispatcher on its LocalSQSBackend."""

    label = "melange 7.2.0"

    def setup(self) -> dict[str, str]:
        super().setup()
        import boto3

        from melange import QueuePublisher, SimpleMessageDispatcher
        from melange.backends.sqs.localsqs import LocalSQSBackend
        from melange.consumers import Consumer
        from melange.serializers.json import JsonSerializer
        from melange.serializers.registry import SerializerRegistry

        port = int(self.params["port"])
        self.queue_name = str(self.params.get("queue", "bench-sqs-melange72"))
        settings = client_settings(port)
        url = boto3.client("sqs", **settings).create_queue(
            QueueName=self.queue_name, Attributes={"VisibilityTimeout": "100"}
        )["QueueUrl"]
        boto3.client("sqs", **settings).purge_queue(QueueUrl=url)
        registry = SerializerRegistry(
            {
                "serializers": {"json": JsonSerializer},
                "serializer_bindings": {dict: "json"},
                "default": "json",
            }
        )

        def backend() -> Any:
            return LocalSQSBackend(
                host="http://127.0.0.1", port=port, sns_host="http://127.0.0.1", sns_port=port
            )

        self.publisher = QueuePublisher(registry, backend())
        self._handle: Tally | None = None
        contender = self

        class BenchConsumer(Consumer):
            def process(self, message: Any, **kwargs: Any) -> None:
                assert contender._handle is not None
                contender._handle(message)

        self.dispatcher = SimpleMessageDispatcher(BenchConsumer(), registry, backend=backend())
        return {"melange": version("melange"), "boto3": version("boto3")}

    def publish_one(self, payload: Payload) -> None:
        self.publisher.publish(self.queue_name, payload)

    def consume(self, n: int, handle: Tally) -> None:
        self._handle = handle

        def after_consume() -> None:
            if handle.complete:
                raise _Enough

        try:
            self.dispatcher.consume_event(self.queue_name, after_consume=after_consume)
        except _Enough:
            pass
        finally:
            self._handle = None


__all__ = ["IDLE_TIMEOUT", "Melange72SQS"]
