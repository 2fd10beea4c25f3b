"""Benchmark: confirmed publishing, one message at a time versus pipelined batches.

Not a test (pytest does not collect it). Run it against the local broker::

    .venv/bin/python tests/rabbitmq/bench_rabbitmq_publish.py [--messages 2000] [--rounds 3]

Prints messages per second (median of the rounds) for each queue type and publish style.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from melange.backends.rabbitmq import RabbitMQBackend
from melange.models import Message


def messages(count: int) -> list[Message]:
    return [Message.create(f'{{"n": {n}, "pad": "{"x" * 200}"}}', "json", 1) for n in range(count)]


def run(queue_type: str, count: int, rounds: int) -> dict[str, float]:
    backend = RabbitMQBackend(host="127.0.0.1", queue_type=queue_type)
    results: dict[str, list[float]] = {"one at a time": [], "batches of 100": [], "one batch": []}
    try:
        for _ in range(rounds):
            for style in results:
                queue, _ = backend.declare_queue(f"bench-{uuid.uuid4().hex[:10]}")
                batch = messages(count)
                started = time.perf_counter()
                if style == "one at a time":
                    for message in batch:
                        backend.publish_to_queue(message, queue)
                elif style == "batches of 100":
                    for i in range(0, count, 100):
                        backend.publish_batch_to_queue(batch[i : i + 100], queue)
                else:
                    backend.publish_batch_to_queue(batch, queue)
                results[style].append(count / (time.perf_counter() - started))
                backend.delete_queue(queue)
    finally:
        backend.close_connection()
    return {style: statistics.median(rates) for style, rates in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for queue_type in ("quorum", "classic"):
        for style, rate in run(queue_type, args.messages, args.rounds).items():
            print(f"{queue_type:8} {style:15} {rate:10.0f} msg/s")


if __name__ == "__main__":
    main()
