"""A consumer process for the multi-process tests: consumes a queue of an SQLite file.

Usage: ``python consumer_process.py DB QUEUE LOG WORK_SECONDS``. Each handled message's
``n`` is appended to LOG as one line (one ``write`` call, so a killed process never leaves
half a line mixed into another's). Runs until SIGTERM, then stops gracefully.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from melange.backends.sqlite import SQLiteBackend
from melange.consumers import Consumer
from melange.message_dispatcher import MessageDispatcher
from melange.serializers.json import JsonSerializer


def main() -> None:
    db, queue, log, work = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handle(message: Any) -> None:
        if work:
            time.sleep(work)  # stands for the handler's real work
        os.write(fd, f"{message['n']}\n".encode())

    backend = SQLiteBackend(db)
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handle)]
    )
    dispatcher.consume_loop(queue)
    backend.close_connection()
    os.close(fd)


if __name__ == "__main__":
    main()
