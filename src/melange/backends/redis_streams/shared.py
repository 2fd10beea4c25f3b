"""What the blocking and the asyncio Redis Streams backends share besides their operations:
their settings, their client and scripts, and the bookkeeping of running an operation's steps.

Each backend adds only its I/O: how a step is performed with its client (awaited or not) and
how a wait blocks a connection of its own.
"""

from __future__ import annotations

import weakref
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
#: How many receive scripts (queue and batch size) a backend keeps packed for its waits.
_WAIT_PACKING_LIMIT = 256


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


class _ClientId:
    """The client id of one connection, forgotten when the connection connects again (a new
    connection of the server, with an id of its own)."""

    __slots__ = ("__weakref__", "value")

    def __init__(self, value: int) -> None:
        self.value: int | None = value

    def forget(self, connection: Any) -> None:
        """The connection's connect callback (redis-py keeps a weak reference to it)."""
        self.value = None


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
        # The packed commands around the block of a wait, per receive script and arguments.
        self._wait_packing: dict[tuple[str, tuple[str | int, ...]], tuple[bytes, bytes]] = {}
        # The client id of each connection a wait used (the connections are redis-py's).
        self._client_ids: weakref.WeakKeyDictionary[Any, _ClientId] = weakref.WeakKeyDictionary()

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
        return self._send(self._r, step)

    def _send(self, client: Any, step: Script | Command) -> Any:
        """Send a script or command with ``client``: its reply (awaitable on asyncio)."""
        if isinstance(step, Script):
            sha = scripts.SHA1[step.name]
            return client.execute_command("EVALSHA", sha, 0, self._prefix, *step.args)
        return client.execute_command(*step.args)

    def _packed_wait(self, connection: Any, wait: Wait) -> tuple[list[bytes], int | None]:
        """What a wait sends in one go, packed by ``connection`` (blocking or asyncio), and
        the connection's client id when it is known: the block, then the script, preceded by
        ``CLIENT ID`` when the id is not known (its reply then comes first).

        The client id of a connection stays the same until it connects again, which a
        connect callback notes; the script and ``CLIENT ID`` are the same at every wait on a
        queue: they are packed once (packing a command is pure Python in redis-py, as costly
        as reading a reply).
        """
        then = wait.then
        key = (then.name, then.args)
        around = self._wait_packing.get(key)
        if around is None:
            if len(self._wait_packing) >= _WAIT_PACKING_LIMIT:
                self._wait_packing.clear()
            evalsha = ("EVALSHA", scripts.SHA1[then.name], 0, self._prefix, *then.args)
            around = (
                b"".join(connection.pack_command("CLIENT", "ID")),
                b"".join(connection.pack_command(*evalsha)),
            )
            self._wait_packing[key] = around
        known = self._client_ids.get(connection)
        client_id = known.value if known is not None and connection.is_connected else None
        block = connection.pack_command(*wait.command)
        if client_id is not None:
            return [b"".join((*block, around[1]))], client_id
        return [b"".join((around[0], *block, around[1]))], None

    def _learned_client_id(self, connection: Any, reply: Any) -> int:
        """Note the client id ``CLIENT ID`` answered on ``connection``; returns it."""
        client_id = int(reply)
        known = self._client_ids.get(connection)
        if known is None:
            known = self._client_ids[connection] = _ClientId(client_id)
            connection.register_connect_callback(known.forget)
        known.value = client_id
        return client_id


__all__ = ["DEFAULT_URL", "Progress", "StreamsBackendBase"]
