"""A deduplication cache in Redis, shared by every process that consumes a queue.

Install the extra: ``pip install melange[redis]``. Claims are atomic across processes::

    from melange.deduplication.redis_cache import RedisCache

    cache = RedisCache.from_url("redis://localhost:6379/0", expire=24 * 3600)
    dispatcher = MessageDispatcher(JsonSerializer(), cache=cache, backend=backend)

How keys are used:

- :meth:`RedisCache.claim` runs ``SET key <claim token> NX PX <lease>``: only one process
  gets the key; the lease ends by itself if that process dies.
- :meth:`RedisCache.renew` resets the lease (``PEXPIRE``) only if the key still holds this
  process's own claim token (compare-and-expire in a Lua script).
- :meth:`RedisCache.mark_done` sets the key to ``"done"`` for ``expire`` seconds.
- :meth:`RedisCache.release` deletes the key only if it still holds this process's own claim
  token (compare-and-delete in a Lua script), so a late release never drops another
  process's claim or a finished mark.

Any other value is read as "processed": keys written by Melange 7.2.0, which stored the key
itself as the value, keep deduplicating after an upgrade.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

try:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(f"RedisCache needs redis-py ({exc}): pip install 'melange[redis]'") from exc

from melange.deduplication.cache import (
    CLAIM_PREFIX,
    DONE,
    ClaimState,
    DeduplicationCache,
    check_lease,
)
from melange.exceptions import ConfigurationError, DeduplicationCacheError

#: Seconds a processed key is remembered unless told otherwise (one week: longer than the
#: default retention of the brokers Melange supports, so a late redelivery is still caught).
DEFAULT_EXPIRE = 7 * 24 * 3600

# Deletes KEYS[1] only when it still holds ARGV[1] (our claim token).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Resets the lease of KEYS[1] to ARGV[2] milliseconds only when it still holds ARGV[1].
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisCache(DeduplicationCache):
    """Deduplication cache in Redis (redis-py 5 or later).

    Args:
        host: Redis host.
        port: Redis port.
        db: Database number.
        password: Password, if Redis requires one.
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
        if expire is not None and (not isinstance(expire, int) or expire <= 0):
            raise ConfigurationError(
                f"expire must be a positive number of seconds or None, got {expire!r}"
            )
        if socket_timeout <= 0 or socket_connect_timeout <= 0:
            raise ConfigurationError(
                "socket timeouts must be positive: an unbounded wait "
                "would hang the dispatcher when Redis stops answering"
            )
        self._expire = expire
        self._prefix = key_prefix
        if client is not None:
            self._client = client
            self._where = "the given Redis client"
        elif url is not None:
            try:
                self._client = redis.Redis.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    retry=_short_retry(),
                )
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL {url!r}: {exc}") from exc
            self._where = _redact(url)
        else:
            self._client = redis.Redis(
                host=host,
                port=port,
                db=db,
                password=password,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                retry=_short_retry(),
            )
            self._where = f"redis://{host}:{port}/{db}"
        self._release_script = self._client.register_script(_RELEASE_SCRIPT)
        self._renew_script = self._client.register_script(_RENEW_SCRIPT)
        # Claim tokens this instance holds, so that release() deletes only its own claims.
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisCache:
        """A cache on the Redis at ``url`` (e.g. ``redis://:secret@cache:6379/2``).

        Keyword arguments are those of the constructor (``expire``, timeouts, ...).
        """
        return cls(url=url, **kwargs)

    @property
    def expire(self) -> int | None:
        """Seconds a processed key is remembered (``None``: forever)."""
        return self._expire

    def _error(self, action: str, key: str, exc: Exception) -> DeduplicationCacheError:
        cause = str(exc).rstrip(".")
        return DeduplicationCacheError(
            f"Redis deduplication cache at {self._where} failed to {action} {key!r}: {cause}. "
            "Check that Redis is running and reachable; messages are left for redelivery "
            "meanwhile (unless the dispatcher fails open)."
        )

    # -- 7.2.0 interface --------------------------------------------------------------------

    def store(self, key: str, value: Any) -> None:
        """Set ``key`` to ``str(value)`` for ``expire`` seconds."""
        try:
            self._client.set(self._prefix + key, str(value), ex=self._expire)
        except redis.RedisError as exc:
            raise self._error("store", key, exc) from exc

    def get(self, key: str) -> str | None:
        """The value stored for ``key``, or ``None`` when there is none."""
        try:
            raw = self._client.get(self._prefix + key)
        except redis.RedisError as exc:
            raise self._error("read", key, exc) from exc
        return _text(raw)

    # -- atomic claims ----------------------------------------------------------------------

    def claim(self, key: str, lease_seconds: float) -> ClaimState:
        """Take ``key`` for ``lease_seconds`` with ``SET NX PX``; see :class:`ClaimState`."""
        check_lease(lease_seconds)
        token = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
        lease_ms = max(1, int(lease_seconds * 1000))
        name = self._prefix + key
        try:
            # A claim that expires between the SET and the GET is retried: the key is free.
            for _ in range(3):
                if self._client.set(name, token, nx=True, px=lease_ms):
                    with self._lock:
                        self._tokens[key] = token
                    return ClaimState.CLAIMED
                value = _text(self._client.get(name))
                if value is None:
                    continue
                if value == token:
                    # Our SET went through but its answer was lost and the client retried.
                    with self._lock:
                        self._tokens[key] = token
                    return ClaimState.CLAIMED
                if value.startswith(CLAIM_PREFIX):
                    return ClaimState.BUSY
                return ClaimState.DONE
        except redis.RedisError as exc:
            raise self._error("claim", key, exc) from exc
        # The key keeps appearing and vanishing: someone else is working on it right now.
        return ClaimState.BUSY

    def renew(self, key: str, lease_seconds: float) -> bool:
        """Reset the lease on ``key`` to ``lease_seconds`` if it still holds our claim token.

        One atomic compare-and-``PEXPIRE``; ``False`` (without asking Redis when this
        instance holds no claim on ``key``) when the claim is no longer ours.
        """
        check_lease(lease_seconds)
        with self._lock:
            token = self._tokens.get(key)
        if token is None:
            return False
        lease_ms = max(1, int(lease_seconds * 1000))
        try:
            renewed = self._renew_script(keys=[self._prefix + key], args=[token, lease_ms])
        except redis.RedisError as exc:
            raise self._error("renew the claim on", key, exc) from exc
        return bool(renewed)

    def mark_done(self, key: str) -> None:
        """Record ``key`` as processed for ``expire`` seconds (replacing any claim)."""
        try:
            self._client.set(self._prefix + key, DONE, ex=self._expire)
        except redis.RedisError as exc:
            raise self._error("mark as done", key, exc) from exc
        with self._lock:
            self._tokens.pop(key, None)

    def release(self, key: str) -> None:
        """Delete ``key`` if it still holds this instance's claim; otherwise leave it."""
        with self._lock:
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

    def __repr__(self) -> str:
        return f"RedisCache({self._where!r}, expire={self._expire!r})"


def _short_retry() -> Retry:
    # Two quick retries ride over a dropped connection; more would hold the message (and the
    # worker) for seconds when Redis is really down, which the dispatcher handles better.
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)


def _redact(url: str) -> str:
    # Keep passwords out of error messages and logs.
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


__all__ = ["DEFAULT_EXPIRE", "RedisCache"]
