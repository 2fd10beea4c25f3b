"""Running the example services in one process, on the in-memory backend."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping

from melange.examples.common.runtime import Reporter
from melange.message_dispatcher import MessageDispatcher


def quiet_reporter(service: str) -> Reporter:
    """A reporter that keeps its lines for the test instead of printing them."""
    return Reporter(service, io.StringIO())


def run_until(
    dispatchers: Mapping[str, MessageDispatcher],
    done: Callable[[], bool],
    timeout: float = 10.0,
) -> None:
    """Let every service consume its queue until ``done()`` or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the flow did not finish in time"
        for queue, dispatcher in dispatchers.items():
            dispatcher.consume_event(queue, wait_seconds=0.01)
