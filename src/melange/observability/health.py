"""Liveness and readiness of a dispatcher, for Kubernetes probes (standard library only).

Liveness (``/livez``): the consume loop is turning. The dispatch engine notes the time each
time the loop asks for a batch or settles a message; the process is live while that was less
than ``liveness_timeout`` seconds ago. A loop stuck for longer (every worker in a handler that
hangs, a deadlock) is not live, and the orchestrator restarts the process. Make the timeout
longer than the longest handler and the receive wait (``wait_seconds``).

Readiness (``/readyz``): connected to its broker and its cache. Not ready while the last
receive failed, while the deduplication cache is unreachable (the dispatcher then waits for
it), while a backend that knows its connection (``connected``, as RabbitMQ's does) has lost
it, and once the dispatcher is stopping. ::

    health = Health(dispatcher)
    with ProbeServer(8080) as server:
        health.serve(server)
        dispatcher.consume_loop("orders")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from melange.dispatch.base import DispatcherBase
from melange.observability.http import ProbeServer, Response

#: Default seconds without a turn of the consume loop after which it is not live.
DEFAULT_LIVENESS_TIMEOUT = 60.0


class Health:
    """The liveness and the readiness of ``dispatcher``.

    Args:
        dispatcher: The dispatcher (threaded or asyncio).
        liveness_timeout: Seconds without a turn of the consume loop after which it is not
            live.
        clock: The clock the dispatcher notes its turns with (``time.monotonic``).
    """

    def __init__(
        self,
        dispatcher: DispatcherBase,
        *,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if liveness_timeout <= 0:
            raise ValueError(f"liveness_timeout must be positive, got {liveness_timeout}")
        self.dispatcher = dispatcher
        self.liveness_timeout = liveness_timeout
        self._clock = clock

    def live(self) -> tuple[bool, str]:
        """Whether the consume loop turned recently, and why not."""
        idle = self._clock() - self.dispatcher.last_turn
        if idle > self.liveness_timeout:
            return False, f"the consume loop has not turned for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether the dispatcher is connected to its broker and cache, and why not."""
        dispatcher = self.dispatcher
        if dispatcher.stopping:
            return False, "stopping"
        connected = getattr(dispatcher.backend, "connected", None)
        if connected is False:
            return False, "not connected to the broker"
        if dispatcher.receive_failing:
            return False, "receiving from the broker fails"
        if dispatcher.cache_unreachable:
            return False, "the deduplication cache is unreachable"
        return True, "ok"

    def serve(self, server: ProbeServer) -> None:
        """Serve ``/livez`` and ``/readyz`` on ``server``: 200 or 503, with a JSON body
        saying why."""
        server.add("/livez", lambda: _answer(*self.live()))
        server.add("/readyz", lambda: _answer(*self.ready()))


def _answer(ok: bool, reason: str) -> Response:
    body = json.dumps({"status": "ok" if ok else "fail", "reason": reason}) + "\n"
    return (200 if ok else 503), "application/json", body.encode()


__all__ = ["DEFAULT_LIVENESS_TIMEOUT", "Health"]
