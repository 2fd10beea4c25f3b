"""A consumer process for the multi-process tests: consumes a queue of an SQLite file.

Usage: ``python consumer_process.py DB QUEUE LOG WORK_SECONDS``. Each handled message's
``n`` is appended to LOG as one line (one ``write`` call, so a killed process never leaves
half a line mixed into another's). Once SIGTERM is handled it creates ``LOG.ready``; on
SIGTERM it stops gracefully, settling what it holds, and exits with status 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.serializers.json import JsonSerializer


def main() -> None:
    db, queue, log, work = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    terminate = threading.Event()
    dispatcher: MessageDispatcher | None = None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        terminate.set()
        if dispatcher is not None:
            dispatcher.stop()

    # Handled from here on, and remembered: a SIGTERM that arrives before the consume loop
    # runs still stops it after its first pass.
    signal.signal(signal.SIGTERM, on_sigterm)
    log.with_suffix(".ready").touch()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handle(message: Any) -> None:
        if work:
            time.sleep(work)  # stands for the handler's real work
        os.write(fd, f"{message['n']}\n".encode())

    backend = SQLiteBackend(db)
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handle)]
    )

    def after_consume() -> None:
        if terminate.is_set():
            dispatcher.stop()

    dispatcher.consume_loop(queue, after_consume=after_consume, install_signal_handlers=False)
    backend.close_connection()
    os.close(fd)


if __name__ == "__main__":
    main()
