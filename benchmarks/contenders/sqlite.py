"""Embedded SQLite contenders: Melange's SQLiteBackend and persist-queue's SQLiteAckQueue.

Both keep the database in WAL mode with ``synchronous=NORMAL`` (Melange's default; set on
persist-queue's connections, whose default is FULL), commit every publish and every
acknowledgement, and acknowledge each message after its handler ran.
"""

from __future__ import annotations

import os
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.contenders.melange_common import EmbeddedContender
from benchmarks.workload import Contender, Payload, Stopwatch, Tally

IDLE_TIMEOUT = 60.0


def _fresh_dir(params: dict[str, Any], name: str) -> Path:
    root = Path(str(params.get("dir", "/tmp/melange-bench"))) / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


class MelangeSQLite(EmbeddedContender):
    """Melange on ``SQLiteBackend`` (one instance: it wakes its own receivers on publish)."""

    label = "Melange SQLite"

    def make_backend(self) -> Any:
        from melange.backends.sqlite import SQLiteBackend

        path = _fresh_dir(self.params, str(self.params.get("subdir", "melange"))) / "bench.db"
        return SQLiteBackend(os.fspath(path))


class PersistQueue(Contender):
    """persist-queue's SQLiteAckQueue with its JSON serializer: put, get, ack by id."""

    label = "persist-queue"

    def setup(self) -> dict[str, str]:
        import persistqueue
        import persistqueue.serializers.json

        path = _fresh_dir(self.params, "persistqueue")
        self.queue = persistqueue.SQLiteAckQueue(
            os.fspath(path),
            multithreading=True,
            auto_commit=True,
            serializer=persistqueue.serializers.json,
        )
        for conn in {id(c): c for c in (self.queue._conn, self.queue._putter)}.values():
            conn.execute("PRAGMA synchronous=NORMAL")
        self._empty = persistqueue.Empty
        return {"persist-queue": version("persist-queue")}

    def stopwatch(self) -> Stopwatch:
        # SQLiteAckQueue keeps acknowledged rows until told to drop them, and its reads slow
        # down as they pile up; its users clear them regularly, so the harness does so too,
        # before each measured section and outside it.
        self.queue.clear_acked_data(max_delete=0, keep_latest=0)
        return super().stopwatch()

    def publish_one(self, payload: Payload) -> None:
        self.queue.put(payload)

    def consume(self, n: int, handle: Tally) -> None:
        while not handle.complete:
            try:
                item = self.queue.get(block=True, timeout=IDLE_TIMEOUT, raw=True)
            except self._empty:
                raise TimeoutError(f"no message for {IDLE_TIMEOUT}s") from None
            handle(item["data"])
            self.queue.ack(id=item["pqid"])

    def teardown(self) -> None:
        self.queue.close()
