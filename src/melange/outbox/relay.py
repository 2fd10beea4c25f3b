"""The relay: sends committed outbox rows to a messaging backend.

A :class:`Relay` takes rows from the outbox table in batches (see
:mod:`melange.outbox.store` for how several relays share the table), sends each destination's
rows with one batch publish (the backends pipeline the confirms, SQS sends ten per request),
and deletes the rows the broker confirmed, in the database transaction that took them on
PostgreSQL. Delivery is at least once: a relay that dies between the broker's confirm and
that delete sends the rows of its batch again after restart (an :class:`~melange.outbox.inbox.Inbox`
on the consuming side skips them). Within a message group rows are sent in id order; a row
the broker refuses backs off ``retry_delay`` seconds and holds back its group's later rows.

On PostgreSQL the relay sleeps on ``LISTEN``: the outbox table's trigger notifies it when a
writing transaction commits; it also looks every ``poll_interval`` seconds. On SQLite it polls.

Run it with ``melange relay --dsn ... --backend-url ...``, or in a process of your own::

    relay = Relay("postgresql://app@db/orders", backend).start()  # a thread
    ...
    relay.stop()

or, in an asyncio application, ``await relay.arun()`` (cancel the task to stop it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.exceptions import (
    BatchPublishError,
    ConfigurationError,
    DestinationNotFoundError,
    TopicNotFoundError,
)
from melange.outbox.schema import DEFAULT_TABLE, TOPIC, OutboxRow
from melange.outbox.store import Claim, RelayStore, open_store

logger = logging.getLogger("melange.outbox")

# Sleep slices while waiting, so that stop() is noticed quickly.
_WAIT_SLICE = 0.25
# Sent rows kept for a while are pruned at most this often (seconds).
_PRUNE_EVERY = 10.0


@dataclass(slots=True)
class RelayStats:
    """What a relay did since it was created."""

    sent: int = 0
    refused: int = 0
    batches: int = 0
    errors: int = 0


class Relay:
    """Forwards committed outbox rows to ``backend``.

    Args:
        database: The database holding the outbox table: a PostgreSQL URL or conninfo (psycopg
            3, the ``postgres`` extra), a ``sqlite:///path`` URL or a SQLite file path.
        backend: Where messages go: any blocking
            :class:`~melange.backends.interfaces.MessagingBackend`.
        table: The outbox table (created if missing).
        batch_size: Rows taken per round.
        poll_interval: Seconds between looks at the table when nothing woke the relay.
        listen: On PostgreSQL, wake on the table's notifications (``False``: poll only).
        lease_seconds: On SQLite, how long a relay holds the rows it took; keep it well above
            the time a batch takes to send. A relay that died frees its rows after this.
        retry_delay: Seconds a row refused by the broker waits before it is tried again.
        keep_sent: Keep sent rows this many seconds (marked sent) before deleting them;
            ``None`` deletes them as soon as the broker confirmed them.
        clock: Wall clock in Unix seconds (tests pass a fake one).
    """

    def __init__(
        self,
        database: str,
        backend: MessagingBackend,
        *,
        table: str = DEFAULT_TABLE,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        listen: bool = True,
        lease_seconds: float = 30.0,
        retry_delay: float = 5.0,
        keep_sent: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size!r}")
        if poll_interval <= 0 or lease_seconds <= 0 or retry_delay < 0:
            raise ConfigurationError(
                "poll_interval and lease_seconds must be positive and retry_delay >= 0"
            )
        if keep_sent is not None and keep_sent < 0:
            raise ConfigurationError(f"keep_sent must be >= 0 or None, got {keep_sent!r}")
        self.backend = backend
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.stats = RelayStats()
        options: dict[str, Any] = {
            "lease_seconds": lease_seconds,
            "retry_delay": retry_delay,
            "keep_sent": keep_sent,
            "listen": listen,
            "clock": clock,
        }
        # Two stores (connections): while one records a sent batch, the other takes and sends
        # the next one (see drain()).
        self._store: RelayStore = open_store(database, table, **options)
        self._other: RelayStore = open_store(database, table, **options)
        self._finisher: ThreadPoolExecutor | None = None
        self._handles: dict[tuple[str, str], Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._set_up = False
        self._pruned_at = 0.0

    @property
    def dialect(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return self._store.dialect

    # -- one round ----------------------------------------------------------------------------

    def relay_once(self) -> int:
        """Take one batch of committed rows, send it, record it; returns the rows sent."""
        if not self._set_up:
            self._store.setup()
            self._set_up = True
        claim = self._store.claim(self.batch_size)
        if not claim.rows:
            return 0
        try:
            sent, failed = self._send(claim.rows)
        except BaseException:
            self._store.abandon(claim)
            raise
        self._store.finish(claim, sent, failed)
        self.stats.batches += 1
        self.stats.sent += len(sent)
        self.stats.refused += len(failed)
        return len(sent)

    def drain(self) -> int:
        """Send everything committed now (rounds until one finds nothing); returns how many.

        Rounds overlap: a batch's rows are recorded as sent (on one connection, by a helper
        thread) while the next batch is taken (on the other), which is sent once the first is
        recorded. The next batch cannot include rows of the batch being recorded: they are
        still locked (PostgreSQL) or leased (SQLite), and rows of their message groups are
        held back until they are done.
        """
        if not self._set_up:
            self._store.setup()
            self._set_up = True
        total = 0
        stores = (self._store, self._other)
        turn = 0
        pending: Future[None] | None = None
        try:
            while not self._stop.is_set():
                store = stores[turn % 2]
                claim = store.claim(self.batch_size)
                if not claim.rows:
                    if pending is None:
                        break
                    # Rows held back behind the batch being recorded are free once it is.
                    previous, pending = pending, None
                    _settle(previous)
                    continue
                try:
                    if pending is not None:
                        # The previous batch is recorded before this one goes out: a relay
                        # that dies has at most one batch sent but not recorded.
                        previous, pending = pending, None
                        _settle(previous)
                    sent, failed = self._send(claim.rows)
                except BaseException:
                    store.abandon(claim)
                    raise
                pending = self._finish_in_background(store, claim, sent, failed)
                self.stats.batches += 1
                self.stats.sent += len(sent)
                self.stats.refused += len(failed)
                total += len(sent)
                turn += 1
        finally:
            if pending is not None:
                _settle(pending)
        return total

    def _finish_in_background(
        self, store: RelayStore, claim: Claim, sent: list[int], failed: dict[int, str]
    ) -> Future[None]:
        if self._finisher is None:
            self._finisher = ThreadPoolExecutor(1, thread_name_prefix="melange-outbox-finish")
        return self._finisher.submit(store.finish, claim, sent, failed)

    def _send(self, rows: Sequence[OutboxRow]) -> tuple[list[int], dict[int, str]]:
        """Send ``rows``, one batch per destination; the ids sent and the refused ones."""
        sent: list[int] = []
        failed: dict[int, str] = {}
        blocked: set[str] = set()  # groups with a refused row: their later rows wait
        by_destination: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in rows:
            by_destination.setdefault((row.kind, row.destination), []).append(row)
        for (kind, destination), batch in by_destination.items():
            for run in _runs(batch):
                run = [r for r in run if r.message.group_id not in blocked]
                if not run:
                    continue
                try:
                    self._publish(kind, destination, run)
                except BatchPublishError as exc:
                    refused = {run[i].id: reason for i, reason in exc.failures.items()}
                    failed.update(refused)
                    sent.extend(r.id for r in run if r.id not in refused)
                    blocked.update(
                        r.message.group_id
                        for r in run
                        if r.id in refused and r.message.group_id is not None
                    )
                    self._log_refusal(kind, destination, len(refused), exc.failures.values())
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    failed.update((r.id, reason) for r in run)
                    blocked.update(r.message.group_id for r in run if r.message.group_id)
                    self._log_refusal(kind, destination, len(run), [reason])
                else:
                    sent.extend(r.id for r in run)
        return sent, failed

    def _publish(self, kind: str, destination: str, rows: Sequence[OutboxRow]) -> None:
        handle = self._handle(kind, destination)
        delay = rows[0].delay_seconds
        try:
            if kind == TOPIC:
                if delay is not None:  # a run with a delay holds one row
                    self.backend.publish_to_topic(rows[0].message, handle, delay_seconds=delay)
                else:
                    self.backend.publish_batch_to_topic([r.message for r in rows], handle)
            elif delay is not None:
                self.backend.publish_to_queue(rows[0].message, handle, delay_seconds=delay)
            else:
                self.backend.publish_batch_to_queue([r.message for r in rows], handle)
        except DestinationNotFoundError:
            self._handles.pop((kind, destination), None)  # deleted since it was looked up
            raise

    def _handle(self, kind: str, destination: str) -> Any:
        """The backend's handle on ``destination``, looked up once; a topic nobody declared
        yet is created (publishing an event before anyone subscribed is normal)."""
        key = (kind, destination)
        handle = self._handles.get(key)
        if handle is None:
            if kind == TOPIC:
                try:
                    handle = self.backend.get_topic(destination)
                except TopicNotFoundError:
                    handle = self.backend.declare_topic(destination)
            else:
                handle = self.backend.get_queue(destination)
            self._handles[key] = handle
        return handle

    @staticmethod
    def _log_refusal(kind: str, destination: str, count: int, reasons: Iterable[str]) -> None:
        first = next(iter(reasons), "")
        logger.error(
            "outbox relay: %d message(s) for %s %r not sent, retried later: %s",
            count,
            kind,
            destination,
            first,
        )

    # -- running --------------------------------------------------------------------------------

    def run(self) -> None:
        """Relay until :meth:`stop`: drain, then sleep until notified or ``poll_interval``.
        Errors (database or broker down) are logged and the loop goes on after a pause."""
        self._stop.clear()
        try:
            while not self._stop.is_set():
                try:
                    self.drain()
                    self._maybe_prune()
                    self._wait()
                except Exception:
                    self.stats.errors += 1
                    logger.exception("outbox relay: round failed; trying again shortly")
                    self._stop.wait(self.poll_interval)
        finally:
            self._close_stores()

    def _close_stores(self) -> None:
        self._store.close()
        self._other.close()
        finisher, self._finisher = self._finisher, None
        if finisher is not None:
            finisher.shutdown(wait=True)

    def _wait(self) -> None:
        deadline = time.monotonic() + self.poll_interval
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._store.wait(min(left, _WAIT_SLICE)):
                return

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at >= _PRUNE_EVERY:
            self._pruned_at = now
            self._store.prune()

    def start(self) -> Relay:
        """Run the relay on a daemon thread; returns ``self``."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the relay is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="melange-outbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the relay to stop after the round in progress, and wait for its thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    async def arun(self) -> None:
        """:meth:`run` on a worker thread, for asyncio applications; cancelling the task stops
        the relay (after the round in progress)."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, self.run)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self._stop.set()
            await done
            raise

    def close(self) -> None:
        """Stop (if running) and close the database connections."""
        self.stop()
        self._close_stores()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Relay {self._store.dialect} table={getattr(self._store, 'table', '?')!r}>"


def _settle(recording: Future[None]) -> None:
    """Wait for a batch to be recorded; its failure is raised here."""
    recording.result()


def _runs(rows: Sequence[OutboxRow]) -> list[list[OutboxRow]]:
    """``rows`` cut into batches: consecutive rows without a delay together, each delayed row
    on its own (a delay is one publish's option)."""
    runs: list[list[OutboxRow]] = []
    for row in rows:
        if row.delay_seconds is None and runs and runs[-1][0].delay_seconds is None:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


__all__ = ["Relay", "RelayStats"]
