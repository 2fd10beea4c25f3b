"""The outbox relay against publishing directly, and commit-to-broker latency.

Throughput: in each of ``--rounds`` interleaved rounds, ``--count`` messages are committed
to the outbox table beforehand (not timed), then one relay sends them all (``Relay.drain``),
and the same number is published directly with ``QueuePublisher.publish_batch`` in batches of
the relay's size, on the same backend; once, messages are published one at a time with
``QueuePublisher.publish`` for reference.

Latency (PostgreSQL only): a relay runs on a thread, woken by LISTEN/NOTIFY (the poll interval
is set to 5 s so that polling cannot help); a writer commits one message at a time, stamping
the commit time in the body; a consumer on the broker measures receive time minus commit
time.

Run: ``python -m benchmarks.outbox_relay [--backend-url amqp://...] [--count 5000]``. A
PostgreSQL database is created for the run on 127.0.0.1:5432 and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

from melange.backends.interfaces import MessagingBackend
from melange.backends.urls import backend_from_url
from melange.outbox import Outbox, Relay
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _drain_queue(backend: MessagingBackend, queue: str, count: int) -> None:
    """Receive and acknowledge ``count`` messages (to empty the queue between rounds)."""
    handle = backend.get_queue(queue)
    got = 0
    while got < count:
        batch = backend.retrieve_messages(handle, max_messages=100, wait_seconds=1)
        if batch:
            backend.acknowledge_batch(batch)
        got += len(batch)


def _fill(dsn: str, table: str, queue: str, count: int) -> None:
    outbox = Outbox(JsonSerializer(), table=table)
    if dsn.startswith("postgresql://"):
        with psycopg.connect(dsn) as conn:
            outbox.create_table(conn)
            for n in range(count):
                outbox.publish(conn, queue, {"n": n, "pad": "x" * 100})
        return
    lite = sqlite3.connect(dsn)
    with lite:
        outbox.create_table(lite)
        for n in range(count):
            outbox.publish(lite, queue, {"n": n, "pad": "x" * 100})
    lite.close()


def throughput(
    dsn: str, backend: MessagingBackend, count: int, batch: int, rounds: int
) -> dict[str, float]:
    """Rates in messages per second: the relay's and direct publishing's, each the median of
    ``rounds`` interleaved rounds (the machine's load varies), and the median of the
    per-round ratios."""
    queue = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    backend.declare_queue(queue)
    publisher = QueuePublisher(JsonSerializer(), backend)
    items = [{"n": n, "pad": "x" * 100} for n in range(count)]
    relay_rates: list[float] = []
    batch_rates: list[float] = []
    try:
        for _ in range(rounds):
            table = f"bench_{uuid.uuid4().hex[:8]}"
            _fill(dsn, table, queue, count)
            with Relay(dsn, backend, table=table, batch_size=batch) as relay:
                relay._store.setup()  # connections and table set up, out of the timing
                started = time.perf_counter()
                relay.drain()
                relay_rates.append(count / (time.perf_counter() - started))
            _drain_queue(backend, queue, count)

            started = time.perf_counter()
            for i in range(0, count, batch):
                publisher.publish_batch(queue, items[i : i + batch])
            batch_rates.append(count / (time.perf_counter() - started))
            _drain_queue(backend, queue, count)

        single = min(count, 1000)
        started = time.perf_counter()
        for item in items[:single]:
            publisher.publish(queue, item)
        single_rate = single / (time.perf_counter() - started)
        _drain_queue(backend, queue, single)
    finally:
        backend.delete_queue(backend.get_queue(queue))
    return {
        "relay": statistics.median(relay_rates),
        "direct_batch": statistics.median(batch_rates),
        "ratio": statistics.median(r / d for r, d in zip(relay_rates, batch_rates, strict=True)),
        "direct_single": single_rate,
    }


def latency(dsn: str, backend_url: str, samples: int) -> dict[str, float]:
    publish_backend = backend_from_url(backend_url)
    consume_backend = backend_from_url(backend_url)
    queue = f"bench-latency-{uuid.uuid4().hex[:8]}"
    publish_backend.declare_queue(queue)
    table = f"bench_{uuid.uuid4().hex[:8]}"
    outbox = Outbox(JsonSerializer(), table=table)
    with psycopg.connect(dsn) as conn:
        outbox.create_table(conn)
    relay = Relay(dsn, publish_backend, table=table, poll_interval=5.0).start()
    delays: list[float] = []
    handle = consume_backend.get_queue(queue)

    def consume() -> None:
        while len(delays) < samples:
            for message in consume_backend.retrieve_messages(handle, wait_seconds=1):
                delays.append(time.time() - json.loads(message.content)["committed"])
                consume_backend.acknowledge(message)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(1.0)  # the relay is listening
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for n in range(samples):
                with conn.transaction():
                    # Stamped just before the COMMIT (well under a millisecond before it).
                    outbox.publish(conn, queue, {"n": n, "committed": time.time()})
                time.sleep(0.02)
        consumer.join(60)
    finally:
        relay.stop()
        publish_backend.delete_queue(publish_backend.get_queue(queue))
        publish_backend.close_connection()
        consume_backend.close_connection()
    delays.sort()
    return {
        "p50_ms": statistics.median(delays) * 1000,
        "p95_ms": delays[int(len(delays) * 0.95) - 1] * 1000,
        "max_ms": delays[-1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    name = f"melange_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    pg = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        backend = backend_from_url(args.backend_url)
        with tempfile.TemporaryDirectory() as tmp:
            for label, dsn in (("postgresql", pg), ("sqlite", str(Path(tmp) / "o.db"))):
                rates = throughput(dsn, backend, args.count, args.batch, args.rounds)
                print(
                    f"{label:10s} relay {rates['relay']:8.0f} msg/s | direct publish_batch "
                    f"{rates['direct_batch']:8.0f} msg/s | direct publish "
                    f"{rates['direct_single']:8.0f} msg/s | relay/batch "
                    f"{rates['ratio']:.2f}x (median of rounds) | relay/single "
                    f"{rates['relay'] / rates['direct_single']:.2f}x"
                )
        backend.close_connection()
        figures = latency(pg, args.backend_url, args.samples)
        print(
            f"postgresql commit-to-broker latency (LISTEN/NOTIFY): p50 {figures['p50_ms']:.1f} ms"
            f" | p95 {figures['p95_ms']:.1f} ms | max {figures['max_ms']:.1f} ms"
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
