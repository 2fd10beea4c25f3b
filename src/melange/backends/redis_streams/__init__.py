"""The Redis Streams backends (need the ``redis`` extra: ``pip install 'melange[redis]'``).

:class:`RedisStreamsBackend` (redis-py, blocking) and :class:`AsyncRedisStreamsBackend`
(``redis.asyncio``) run the same operations, Lua scripts and keys: either consumes what the other
published. URL: ``redis+streams://host:6379/0`` (see :mod:`melange.backends.urls`).

- :mod:`~melange.backends.redis_streams.backend`: the blocking backend, and how Melange's
  model maps onto Redis.
- :mod:`~melange.backends.redis_streams.async_backend`: the asyncio backend.
- :mod:`~melange.backends.redis_streams.operations`: every operation, written once as
  sans-I/O steps that both backends perform.
- :mod:`~melange.backends.redis_streams.shared`: what both backends hold, and the running of
  an operation's steps.
- :mod:`~melange.backends.redis_streams.scripts`: the Lua scripts and the keys they use.
- :mod:`~melange.backends.redis_streams.topology`: key names, queue options, script errors.
- :mod:`~melange.backends.redis_streams.wire`: messages as stream entries, and receipts.
- :mod:`~melange.backends.redis_streams.connection`: client settings and waiting receives.
- :mod:`~melange.backends.redis_streams.inspect`: :class:`QueueStats` and peeked copies.
"""

try:
    import redis  # noqa: F401 - checked here so every module of the package reports it clearly
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the Redis Streams backend needs redis-py ({exc}): pip install 'melange[redis]'"
    ) from exc

from melange.backends.redis_streams.async_backend import AsyncRedisStreamsBackend
from melange.backends.redis_streams.backend import RedisStreamsBackend
from melange.backends.redis_streams.inspect import QueueStats

__all__ = ["AsyncRedisStreamsBackend", "QueueStats", "RedisStreamsBackend"]
