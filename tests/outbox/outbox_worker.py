"""Processes the outbox fault tests start and kill: an application that commits and dies, a
relay that dies after the broker confirmed a batch, and a consumer that crashes around its
commit. Run as ``python outbox_worker.py COMMAND --options``."""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from melange.backends.urls import backend_from_url
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.dispatch.middleware import Middleware
from melange.dispatch.threaded import MessageDispatcher
from melange.models import Message, QueueWrapper
from melange.outbox import Inbox, Outbox, Relay, UnitOfWork
from melange.serializers.json import JsonSerializer


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def connect(dsn: str) -> Any:
    if dsn.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(dsn)
    return sqlite3.connect(dsn, timeout=30)


def commit_then_die(args: argparse.Namespace) -> None:
    """Commit ``count`` messages after the embedded relay's first look, and die before it
    looks again."""
    backend = backend_from_url(args.backend_url)
    relay = Relay(args.dsn, backend, table=args.table)
    relay.drain()  # at start-up: nothing committed yet
    outbox = Outbox(table=args.table)
    with connect(args.dsn) as conn:
        for n in range(args.count):
            outbox.publish(conn, args.queue, {"n": n})
    print("committed", flush=True)
    _die()


def die_before_commit(args: argparse.Namespace) -> None:
    """Write ``count`` messages and die with the transaction open."""
    outbox = Outbox(table=args.table)
    conn = connect(args.dsn)
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN")
    for n in range(args.count):
        outbox.publish(conn, args.queue, {"n": n, "uncommitted": True})
    print("written", flush=True)
    _die()


def relay_dies_after_a_confirmed_batch(args: argparse.Namespace) -> None:
    """A relay that, once the broker confirmed its first batch, hangs until it is killed:
    the broker has the batch, the table still has its rows."""
    backend = backend_from_url(args.backend_url)
    publish = backend.publish_batch_to_queue

    def publish_then_hang(messages: Sequence[Message], queue: QueueWrapper, **kw: Any) -> None:
        publish(messages, queue, **kw)
        # Written aside then renamed: the test polls for the marker and must never see it empty.
        pending = Path(args.marker).with_suffix(".pending")
        pending.write_text(str(len(messages)))
        pending.replace(args.marker)
        time.sleep(600)

    backend.publish_batch_to_queue = publish_then_hang  # type: ignore[method-assign]
    Relay(
        args.dsn,
        backend,
        table=args.table,
        batch_size=args.batch_size,
        lease_seconds=args.lease_seconds,
    ).run()


class CrashAfterCommit(Middleware):
    """Kills the process after the inbox committed, before the message is acknowledged."""

    def __init__(self, probability: float, rng: random.Random) -> None:
        self.probability = probability
        self.rng = rng

    @contextmanager
    def consumer_call(self, message: Message, consumer: Any) -> Iterator[None]:
        yield
        if self.rng.random() < self.probability:
            _die()


def consume(args: argparse.Namespace) -> None:
    """Consume ``queue`` with an inbox consumer that writes an effect and publishes through
    the outbox, crashing now and then before or after its commit; exit once idle."""
    rng = random.Random(args.seed)
    backend = backend_from_url(args.backend_url)
    outbox = Outbox(table=args.table)
    cache = SQLDeduplicationCache(args.dsn, table=f"done_{args.table}")
    inbox = Inbox(lambda: connect(args.dsn), cache, outbox=outbox)
    mark = "%s" if args.dsn.startswith("postgresql://") else "?"

    @inbox.consumer(name="effects")
    def handle(event: dict[str, Any], uow: UnitOfWork) -> None:
        uow.connection.execute(
            f"INSERT INTO effects_{args.table} (n) VALUES ({mark})", (event["n"],)
        )
        uow.publish(args.out, {"n": event["n"]})
        if rng.random() < args.crash_before_commit:
            _die()  # the transaction dies with the process: nothing of it was committed

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[handle],
        middleware=[CrashAfterCommit(args.crash_after_commit, rng)],
    )
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < args.idle:
        if dispatcher.consume_event(args.queue, max_messages=1, wait_seconds=1):
            idle_since = time.monotonic()
    print(f"processed={inbox.stats.processed} skipped={inbox.stats.skipped}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--backend-url", default="memory://")
    parser.add_argument("--queue", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--marker", default="")
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--crash-after-commit", type=float, default=0.0)
    parser.add_argument("--crash-before-commit", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    commands = {
        "commit-then-die": commit_then_die,
        "die-before-commit": die_before_commit,
        "relay-dies-after-a-confirmed-batch": relay_dies_after_a_confirmed_batch,
        "consume": consume,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
