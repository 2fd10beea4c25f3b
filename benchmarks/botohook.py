"""Count every HTTP request botocore sends, with its ``before-send`` event.

:func:`install` wraps ``botocore.session.Session.create_client`` so that every client made
afterwards, by any session (boto3's default one, a library's own, a resource's), registers
the counter on its event emitter. ``before-send`` fires once per attempt, retries included,
so the count is exact.

Imports botocore only when installed: this module also runs under the released 7.2.0
interpreter.
"""

from __future__ import annotations

import threading
from typing import Any


class RequestCounter:
    """A thread-safe count of requests, per operation name and in total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.by_operation: dict[str, int] = {}

    def __call__(self, request: Any = None, **kwargs: Any) -> None:
        event_name = str(kwargs.get("event_name", ""))
        # "before-send.sqs.SendMessage" -> "sqs.SendMessage"
        operation = event_name.partition(".")[2] or "?"
        with self._lock:
            self.total += 1
            self.by_operation[operation] = self.by_operation.get(operation, 0) + 1


_counter: RequestCounter | None = None


def install() -> RequestCounter:
    """Start counting requests of every botocore client created from now on."""
    global _counter
    if _counter is not None:
        return _counter
    import botocore.session

    counter = RequestCounter()
    original = botocore.session.Session.create_client

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-send", counter)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
    _install_aio(counter)
    _counter = counter
    return counter


def _install_aio(counter: RequestCounter) -> None:
    """The same for aiobotocore's sessions, whose clients are made by a coroutine."""
    try:
        import aiobotocore.session
    except ImportError:
        return
    original = aiobotocore.session.AioSession._create_client

    async def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = await original(self, *args, **kwargs)
        client.meta.events.register("before-send", counter)
        return client

    aiobotocore.session.AioSession._create_client = create_client  # type: ignore[method-assign]
