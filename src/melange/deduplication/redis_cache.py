"""Deduplication caches in Redis, shared by every process that consumes a queue.

Install the extra: ``pip install melange[redis]``. Claims are atomic across processes::

    from melange.deduplication.redis_cache import RedisCache

    cache = RedisCache.from_url("redis://localhost:6379/0", expire=24 * 3600)
    dispatcher = MessageDispatcher(JsonSerializer(), cache=cache, backend=backend)

:class:`AsyncRedisCache` is the same cache on ``redis.asyncio``, for the asyncio dispatcher;
it takes the same options, and the two may share keys.

How keys are used (the scripts are in :mod:`~melange.deduplication.redis_claims`):

- ``claim`` sets the key to a fresh claim token with ``SET NX PX <lease>`` and reads what it
  holds, in one Lua script: only one process gets the key; the lease ends by itself if that
  process dies.
- ``renew`` resets the lease (``PEXPIRE``) only if the key still holds this instance's own
  claim token (compare-and-expire in a Lua script).
- ``mark_done`` sets the key to ``"done"`` for ``expire`` seconds.
- ``release`` deletes the key only if it still holds this instance's own claim token
  (compare-and-delete in a Lua script), so a late release never drops another process's
  claim or a finished mark.

Any other value is read as "processed": keys written by Melange 7.2.0, which stored the key
itself as the value, keep deduplicating after an upgrade.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

try:
    import redis
    import redis.asyncio
    import redis.asyncio.retry
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(f"RedisCache needs redis-py ({exc}): pip install 'melange[redis]'") from exc

from melange.deduplication.async_cache import AsyncDeduplicationCache
from melange.deduplication.cache import DONE, ClaimState, DeduplicationCache, check_expire
from melange.deduplication.redis_claims import (
    CLAIM_SCRIPT,
    DEFAULT_EXPIRE,
    RELEASE_SCRIPT,
    RENEW_SCRIPT,
    RETRIES,
    RETRY_BACKOFF_BASE,
    RETRY_BACKOFF_CAP,
    cache_error,
    check_options,
    claim_state,
    expire_ms,
    lease_ms,
    new_token,
    redact,
    text,
)
from melange.exceptions import ConfigurationError, DeduplicationCacheError

_Client = TypeVar("_Client", "redis.Redis", "redis.asyncio.Redis")


class _RedisCacheConfig(Generic[_Client]):
    """The options, the client and the claim tokens of a Redis cache: everything but I/O."""

    _client: _Client

    def __init__(
        self,
        client_class: Any,
        retry: Any,
        *,
        host: str,
        port: int,
        db: int,
        password: str | None,
        expire: int | None,
        url: str | None,
        socket_timeout: float,
        socket_connect_timeout: float,
        key_prefix: str,
        client: _Client | None,
    ) -> None:
        check_options(expire, socket_timeout, socket_connect_timeout)
        self._expire = expire
        self._prefix = key_prefix
        timeouts = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "retry": retry,
        }
        if client is not None:
            self._client = client
            self._where = "the given Redis client"
        elif url is not None:
            try:
                self._client = client_class.from_url(url, **timeouts)
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL {redact(url)!r}: {exc}") from exc
            self._where = redact(url)
        else:
            self._client = client_class(host=host, port=port, db=db, password=password, **timeouts)
            self._where = f"redis://{host}:{port}/{db}"
        # Script objects of the sync or the asyncio client: called alike, awaited or not.
        self._claim_script: Any = self._client.register_script(CLAIM_SCRIPT)
        self._release_script: Any = self._client.register_script(RELEASE_SCRIPT)
        self._renew_script: Any = self._client.register_script(RENEW_SCRIPT)
        # Claim tokens this instance holds, so that it renews and releases only its own claims.
        # Each use is one dict operation, atomic in CPython: threads may share the cache.
        self._tokens: dict[str, str] = {}

    @property
    def expire(self) -> int | None:
        """Seconds a processed key is remembered (``None``: forever)."""
        return self._expire

    def _error(self, action: str, key: str, exc: Exception) -> DeduplicationCacheError:
        return cache_error(self._where, action, key, exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r}, expire={self._expire!r})"


class RedisCache(_RedisCacheConfig["redis.Redis"], DeduplicationCache):
    """Deduplication cache in Redis (redis-py 5 or later).

    Args:
        host: Redis host.
        port: Redis port.
        db: Database number.
        password: Password, if Redis requires one (never shown in errors, logs or ``repr``).
        expire: Seconds a processed key is remembered; ``None`` keeps it forever.
        url: A ``redis://`` / ``rediss://`` / ``unix://`` URL, used instead of host, port,
            db and password.
        socket_timeout: Seconds to wait for an answer before the call fails with
            :class:`~melange.exceptions.DeduplicationCacheError`.
        socket_connect_timeout: Seconds to wait for a connection.
        key_prefix: Prepended to every key (empty by default, as in 7.2.0).
        client: An existing ``redis.Redis`` client to use instead of creating one; it must
            not decode responses.

    Every Redis failure (connection refused, timeout, ...) raises
    :class:`~melange.exceptions.DeduplicationCacheError`; the dispatcher then leaves the
    message for later unless it was created with ``dedup_fail_open=True``.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        expire: int | None = DEFAULT_EXPIRE,
        *,
        url: str | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 5.0,
        key_prefix: str = "",
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(
            redis.Redis,
            Retry(ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), RETRIES),
            host=host,
            port=port,
            db=db,
            password=password,
            expire=expire,
            url=url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            key_prefix=key_prefix,
            client=client,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisCache:
        """A cache on the Redis at ``url`` (e.g. ``redis://:secret@cache:6379/2``).

        Keyword arguments are those of the constructor (``expire``, timeouts, ...).
        """
        return cls(url=url, **kwargs)

    # -- 7.2.0 interface --------------------------------------------------------------------

    def store(self, key: str, value: Any, expire: float | None = None) -> None:
        """Set ``key`` to ``str(value)`` for ``expire`` seconds (default: the cache's)."""
        check_expire(expire)
        try:
            if expire is None:
                self._client.set(self._prefix + key, str(value), ex=self._expire)
            else:
                self._client.set(self._prefix + key, str(value), px=expire_ms(expire))
        except redis.RedisError as exc:
            raise self._error("store", key, exc) from exc

    def get(self, key: str) -> str | None:
        """The value stored for ``key``, or ``None`` when there is none."""
        try:
            raw = self._client.get(self._prefix + key)
        except redis.RedisError as exc:
            raise self._error("read", key, exc) from exc
        return text(raw)

    # -- atomic claims ----------------------------------------------------------------------

    def claim(self, key: str, lease_seconds: float) -> ClaimState:
        """Take ``key`` for ``lease_seconds`` (``SET NX PX``); see :class:`ClaimState`."""
        token, lease = new_token(), lease_ms(lease_seconds)
        try:
            reply = self._claim_script(keys=[self._prefix + key], args=[token, lease])
        except redis.RedisError as exc:
            raise self._error("claim", key, exc) from exc
        state = claim_state(reply, token)
        if state is ClaimState.CLAIMED:
            self._tokens[key] = token
        return state

    def renew(self, key: str, lease_seconds: float) -> bool:
        """Reset the lease on ``key`` to ``lease_seconds`` if it still holds our claim token.

        One atomic compare-and-``PEXPIRE``; ``False`` (without asking Redis when this
        instance holds no claim on ``key``) when the claim is no longer ours.
        """
        lease = lease_ms(lease_seconds)
        token = self._tokens.get(key)
        if token is None:
            return False
        try:
            renewed = self._renew_script(keys=[self._prefix + key], args=[token, lease])
        except redis.RedisError as exc:
            raise self._error("renew the claim on", key, exc) from exc
        return bool(renewed)

    def mark_done(self, key: str) -> None:
        """Record ``key`` as processed for ``expire`` seconds (replacing any claim)."""
        try:
            self._client.set(self._prefix + key, DONE, ex=self._expire)
        except redis.RedisError as exc:
            raise self._error("mark as done", key, exc) from exc
        self._tokens.pop(key, None)

    def release(self, key: str) -> None:
        """Delete ``key`` if it still holds this instance's claim; otherwise leave it."""
        token = self._tokens.pop(key, None)
        if token is None:
            return
        try:
            self._release_script(keys=[self._prefix + key], args=[token])
        except redis.RedisError as exc:
            # The claim then simply expires at the end of its lease.
            raise self._error("release the claim on", key, exc) from exc

    # -- housekeeping -----------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether Redis answers; raises ``DeduplicationCacheError`` when it does not."""
        try:
            return bool(self._client.ping())
        except redis.RedisError as exc:
            raise self._error("ping", "", exc) from exc

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()


class AsyncRedisCache(_RedisCacheConfig["redis.asyncio.Redis"], AsyncDeduplicationCache):
    """:class:`RedisCache` on ``redis.asyncio``, for the asyncio dispatcher.

    Takes the same arguments as :class:`RedisCache` (``client`` is a ``redis.asyncio.Redis``
    that does not decode responses), keeps claims the same way (the two may share keys), and
    raises :class:`~melange.exceptions.DeduplicationCacheError` on every Redis failure. Use it
    on one event loop at a time; :meth:`aclose` it when done.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        expire: int | None = DEFAULT_EXPIRE,
        *,
        url: str | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 5.0,
        key_prefix: str = "",
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        backoff = ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE)
        super().__init__(
            redis.asyncio.Redis,
            redis.asyncio.retry.Retry(backoff, RETRIES),
            host=host,
            port=port,
            db=db,
            password=password,
            expire=expire,
            url=url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            key_prefix=key_prefix,
            client=client,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AsyncRedisCache:
        """A cache on the Redis at ``url``; see :meth:`RedisCache.from_url`."""
        return cls(url=url, **kwargs)

    async def store(self, key: str, value: Any, expire: float | None = None) -> None:
        """Set ``key`` to ``str(value)`` for ``expire`` seconds (default: the cache's)."""
        check_expire(expire)
        try:
            if expire is None:
                await self._client.set(self._prefix + key, str(value), ex=self._expire)
            else:
                await self._client.set(self._prefix + key, str(value), px=expire_ms(expire))
        except redis.RedisError as exc:
            raise self._error("store", key, exc) from exc

    async def get(self, key: str) -> str | None:
        """The value stored for ``key``, or ``None`` when there is none."""
        try:
            raw = await self._client.get(self._prefix + key)
        except redis.RedisError as exc:
            raise self._error("read", key, exc) from exc
        return text(raw)

    async def claim(self, key: str, lease_seconds: float) -> ClaimState:
        """Take ``key`` for ``lease_seconds``; see :meth:`RedisCache.claim`."""
        token, lease = new_token(), lease_ms(lease_seconds)
        try:
            reply = await self._claim_script(keys=[self._prefix + key], args=[token, lease])
        except redis.RedisError as exc:
            raise self._error("claim", key, exc) from exc
        state = claim_state(reply, token)
        if state is ClaimState.CLAIMED:
            self._tokens[key] = token
        return state

    async def renew(self, key: str, lease_seconds: float) -> bool:
        """Reset our claim's lease; see :meth:`RedisCache.renew`."""
        lease = lease_ms(lease_seconds)
        token = self._tokens.get(key)
        if token is None:
            return False
        try:
            renewed = await self._renew_script(keys=[self._prefix + key], args=[token, lease])
        except redis.RedisError as exc:
            raise self._error("renew the claim on", key, exc) from exc
        return bool(renewed)

    async def mark_done(self, key: str) -> None:
        """Record ``key`` as processed for ``expire`` seconds (replacing any claim)."""
        try:
            await self._client.set(self._prefix + key, DONE, ex=self._expire)
        except redis.RedisError as exc:
            raise self._error("mark as done", key, exc) from exc
        self._tokens.pop(key, None)

    async def release(self, key: str) -> None:
        """Delete ``key`` if it still holds this instance's claim; otherwise leave it."""
        token = self._tokens.pop(key, None)
        if token is None:
            return
        try:
            await self._release_script(keys=[self._prefix + key], args=[token])
        except redis.RedisError as exc:
            raise self._error("release the claim on", key, exc) from exc

    async def ping(self) -> bool:
        """Whether Redis answers; raises ``DeduplicationCacheError`` when it does not."""
        try:
            return bool(await self._client.ping())
        except redis.RedisError as exc:
            raise self._error("ping", "", exc) from exc

    async def aclose(self) -> None:
        """Close the connections to Redis."""
        await self._client.aclose()


__all__ = ["DEFAULT_EXPIRE", "AsyncRedisCache", "RedisCache"]
