"""What the blocking and the asyncio Redis Streams backends share besides their operations:
their settings, their client and scripts, and the bookkeeping of running an operation's steps.

Each backend adds only its I/O: how a step is performed with its client (awaited or not) and
how a wait blocks a connection of its own.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from redis.exceptions import NoScriptError, RedisError

from melange.backends.interfaces import BackendCapabilities
from melange.backends.redis_streams import scripts
from melange.backends.redis_streams.connection import client_url, redacted
from melange.backends.redis_streams.operations import (
    Command,
    Operations,
    Script,
    Step,
    Steps,
    Wait,
    capabilities,
    check_options,
    failure,
)
from melange.models import Message

_T = TypeVar("_T")
_C = TypeVar("_C")

#: The URL of a Redis on this machine, database 0.
DEFAULT_URL = "redis://127.0.0.1:6379/0"


class Progress(Generic[_T]):
    """One operation being run: the step to perform next (``None`` once it is over) and its
    result. A runner performs :attr:`step` and hands back the reply or the error.

    Scripts run by their digest (``EVALSHA``); one the server does not hold yet (a restarted
    or flushed Redis) is loaded and run again here, unseen by the operation.
    """

    def __init__(self, steps: Steps[_T]) -> None:
        self._steps = steps
        self.step: Step | None = None
        self.result: _T
        # The script being loaded, and whether the current one was loaded already.
        self._loading: Script | None = None
        self._loaded = False
        self._advance(None)

    def _advance(self, value: Any) -> None:
        try:
            self.step = self._steps.send(value)
        except StopIteration as stop:
            self.step = None
            self.result = stop.value

    def reply(self, value: Any) -> None:
        """The step succeeded with ``value``."""
        if self._loading is not None:
            self.step, self._loading = self._loading, None
            return
        self._loaded = False
        self._advance(value)

    def fail(self, exc: RedisError) -> None:
        """The step failed: the operation gets the error :func:`failure` makes of it."""
        step = self._loading or self.step
        assert step is not None
        self._loading = None
        if isinstance(exc, NoScriptError) and isinstance(step, Script) and not self._loaded:
            self._loading, self._loaded = step, True
            self.step = Command(("SCRIPT LOAD", scripts.SOURCES[step.name]))
            return
        self._loaded = False
        try:
            self.step = self._steps.throw(failure(step, exc))
        except StopIteration as stop:
            self.step = None
            self.result = stop.value

    def close(self) -> None:
        """End the operation (early, when the runner was cancelled or failed)."""
        self._steps.close()


class StreamsBackendBase(Generic[_C]):
    """The state and the I/O-free methods of both Redis Streams backends; ``_C`` is the type
    of their client."""

    loop_wait_seconds: float | None = 1.0

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "melange:",
        visibility_timeout: float = 30.0,
        deduplication_window: float = 300.0,
        max_message_size: int | None = None,
        retries: int = 10,
        client: _C | None = None,
    ) -> None:
        check_options(visibility_timeout, deduplication_window, retries)
        self.url = redacted(url)
        self._ops = Operations(
            prefix, float(visibility_timeout), deduplication_window, max_message_size
        )
        #: The key names under the prefix.
        self.keys = self._ops.keys
        self._prefix = prefix
        # Kept as given too, so the capabilities are read without a connection (docs tables).
        self._max_message_size = max_message_size
        self._owns_client = client is None
        #: The redis-py client (blocking or asyncio).
        self.client: _C = client if client is not None else self._connect(client_url(url), retries)
        # Untyped view of the client: redis-py's stubs type replies as bytes or str.
        self._r: Any = cast(Any, self.client)

    def _connect(self, url: str, retries: int) -> _C:
        """A client for ``url`` (a redis-py URL) retrying connection errors ``retries`` times."""
        raise NotImplementedError

    @property
    def visibility_timeout(self) -> float:
        """Default visibility timeout of new queues, in seconds."""
        return self._ops.visibility_timeout

    @visibility_timeout.setter
    def visibility_timeout(self, seconds: float) -> None:
        self._ops.visibility_timeout = float(seconds)

    @property
    def capabilities(self) -> BackendCapabilities:
        return capabilities(self._max_message_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, prefix={self._prefix!r})"

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self._ops.visibility_timeout_for(message)

    def _call(self, step: Script | Command) -> Any:
        """Send a script or command with the client: its reply (awaitable on asyncio)."""
        if isinstance(step, Script):
            sha = scripts.SHA1[step.name]
            return self._r.execute_command("EVALSHA", sha, 0, self._prefix, *step.args)
        return self._r.execute_command(*step.args)

    def _wait_commands(self, wait: Wait) -> list[Any]:
        """What a wait sends in one go: the connection's id, the block, then the script."""
        then = wait.then
        evalsha = ("EVALSHA", scripts.SHA1[then.name], 0, self._prefix, *then.args)
        return [("CLIENT", "ID"), wait.command, evalsha]


__all__ = ["DEFAULT_URL", "Progress", "StreamsBackendBase"]
