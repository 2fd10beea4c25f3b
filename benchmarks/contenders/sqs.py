"""SQS contenders on the harness's moto server: Melange and raw boto3 making the same calls.

Both send the 7.2.0 wire format (a ``{"Message": ...}`` JSON body with ``manifest`` and
``serializer_id`` attributes), receive up to 10 messages per call and delete what they
handled with one batch call. Every botocore request is counted.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version
from typing import Any

from benchmarks import botohook
from benchmarks.contenders.melange_common import MelangeContender
from benchmarks.workload import Contender, Payload, Tally

#: A receive that keeps coming back empty for this long means the contender is broken.
IDLE_TIMEOUT = 60.0
#: Long-poll seconds of a receive (Melange's default).
WAIT_SECONDS = 10
ATTRIBUTES = {
    "manifest": {"DataType": "String", "StringValue": "json"},
    "serializer_id": {"DataType": "Number", "StringValue": "1"},
}


def client_settings(port: int) -> dict[str, Any]:
    """Keyword arguments for a boto3 client of the moto server on ``port``."""
    return {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "region_name": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
    }


class _Counted(Contender):
    def setup(self) -> dict[str, str]:
        self.counter = botohook.install()
        return {}

    def purge(self) -> None:
        client = self.pub_backend.sqs_client
        client.purge_queue(QueueUrl=client.get_queue_url(QueueName=self.queue_name)["QueueUrl"])

    def request_count(self) -> int | None:
        return self.counter.total


class RawBoto3(_Counted):
    """boto3's SQS client: send_message / send_message_batch, receive 10, delete_message_batch."""

    label = "raw boto3"

    def setup(self) -> dict[str, str]:
        super().setup()
        import boto3

        self.queue_name = str(self.params.get("queue", "bench-sqs-boto3"))
        settings = client_settings(int(self.params["port"]))
        # Separate clients for the producer thread and the consumer, as Melange has.
        self.pub = boto3.client("sqs", **settings)
        self.sub = boto3.client("sqs", **settings)
        self.url = self.pub.create_queue(
            QueueName=self.queue_name, Attributes={"VisibilityTimeout": "100"}
        )["QueueUrl"]
        self.pub.purge_queue(QueueUrl=self.url)
        return {"boto3": version("boto3"), "botocore": version("botocore")}

    def purge(self) -> None:
        self.pub.purge_queue(QueueUrl=self.url)

    def publish_one(self, payload: Payload) -> None:
        self.pub.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps({"Message": json.dumps(payload)}),
            MessageAttributes=ATTRIBUTES,
        )

    def publish_many(self, payloads: list[Payload]) -> None:
        for offset in range(0, len(payloads), 10):
            entries = [
                {
                    "Id": str(index),
                    "MessageBody": json.dumps({"Message": json.dumps(payload)}),
                    "MessageAttributes": ATTRIBUTES,
                }
                for index, payload in enumerate(payloads[offset : offset + 10])
            ]
            response = self.pub.send_message_batch(QueueUrl=self.url, Entries=entries)
            if response.get("Failed"):
                raise RuntimeError(f"batch refused: {response['Failed']}")

    def consume(self, n: int, handle: Tally) -> None:
        idle_since = time.monotonic()
        while not handle.complete:
            # The same receive Melange makes (attributes, long poll, visibility timeout).
            response = self.sub.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=WAIT_SECONDS,
                VisibilityTimeout=100,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=[
                    "ApproximateReceiveCount",
                    "MessageGroupId",
                    "MessageDeduplicationId",
                ],
            )
            messages = response.get("Messages", [])
            if not messages:
                if time.monotonic() - idle_since > IDLE_TIMEOUT:
                    raise TimeoutError(f"no message for {IDLE_TIMEOUT}s on {self.queue_name}")
                continue
            idle_since = time.monotonic()
            for message in messages:
                handle(json.loads(json.loads(message["Body"])["Message"]))
            self.sub.delete_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )


class MelangeSQS(MelangeContender):
    """Melange on ``LocalSQSBackend``: QueuePublisher and a MessageDispatcher consume loop."""

    label = "Melange"

    def setup(self) -> dict[str, str]:
        self.counter = botohook.install()
        versions = super().setup()
        if self.native:
            return {**versions, "aiobotocore": version("aiobotocore")}
        return {**versions, "boto3": version("boto3"), "botocore": version("botocore")}

    def make_backend(self) -> Any:
        from melange.backends.sqs.localsqs import LocalSQSBackend

        return LocalSQSBackend(host="127.0.0.1", port=int(self.params["port"]))

    def make_async_backend(self) -> Any | None:
        try:
            from melange.backends.sqs.async_backend import AsyncLocalSQSBackend
        except ImportError:  # aiobotocore is not installed
            return None
        return AsyncLocalSQSBackend(host="127.0.0.1", port=int(self.params["port"]))

    def purge(self) -> None:
        if self.native:
            import boto3

            client = boto3.client("sqs", **client_settings(int(self.params["port"])))
            # Outside the measured sections: not a request of the backend under test.
            url = client.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
            client.purge_queue(QueueUrl=url)
            return
        client = self.pub_backend.sqs_client
        client.purge_queue(QueueUrl=client.get_queue_url(QueueName=self.queue_name)["QueueUrl"])

    def request_count(self) -> int | None:
        return self.counter.total
