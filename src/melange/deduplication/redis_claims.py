"""How claims are kept in Redis: the rules both Redis caches share.

:class:`~melange.deduplication.redis_cache.RedisCache` (redis-py) and
:class:`~melange.deduplication.redis_cache.AsyncRedisCache` (``redis.asyncio``) differ only in
how they wait for Redis. What they send and how they read the answer lives here, once:

- :data:`CLAIM_SCRIPT` sets the key to a fresh claim token with ``NX PX <lease>`` and returns
  what the key holds afterwards, in one atomic step; :func:`claim_state` reads that reply;
- :data:`RENEW_SCRIPT` resets the lease only while the key holds our token
  (compare-and-``PEXPIRE``);
- :data:`RELEASE_SCRIPT` deletes the key only while it holds our token (compare-and-delete),
  so a late release never drops another process's claim or a finished mark.

Any value other than a claim token reads as "processed": keys written by Melange 7.2.0, which
stored the key itself as the value, keep deduplicating after an upgrade.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from melange.deduplication.cache import CLAIM_PREFIX, ClaimState, check_lease
from melange.exceptions import ConfigurationError, DeduplicationCacheError
from melange.redaction import redact_url

#: Seconds a processed key is remembered unless told otherwise (one week: longer than the
#: default retention of the brokers Melange supports, so a late redelivery is still caught).
DEFAULT_EXPIRE = 7 * 24 * 3600

#: Two quick retries ride over a dropped connection; more would hold the message (and the
#: worker) for seconds when Redis is really down, which the dispatcher handles better.
RETRIES = 2
RETRY_BACKOFF_CAP = 0.2
RETRY_BACKOFF_BASE = 0.02

# KEYS[1]: the key; ARGV[1]: our claim token; ARGV[2]: the lease in milliseconds. Returns
# what the key holds afterwards. One script rather than SET then GET: a claim that expires
# between the two cannot be misread, and a retried call finds its own token.
CLAIM_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return ARGV[1]
end
return redis.call('GET', KEYS[1])
"""

# Resets the lease of KEYS[1] to ARGV[2] milliseconds only when it still holds ARGV[1].
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Deletes KEYS[1] only when it still holds ARGV[1] (our claim token).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def new_token() -> str:
    """A claim token no other claim uses."""
    return f"{CLAIM_PREFIX}{uuid.uuid4().hex}"


def lease_ms(lease_seconds: float) -> int:
    """A claim's lease in whole milliseconds (at least one); refuses a non-positive lease."""
    check_lease(lease_seconds)
    return max(1, int(lease_seconds * 1000))


def expire_ms(expire: float) -> int:
    """A per-key ``expire`` in whole milliseconds (at least one), for ``SET PX``."""
    return max(1, math.ceil(expire * 1000))


def claim_state(reply: Any, token: str) -> ClaimState:
    """What :data:`CLAIM_SCRIPT`'s ``reply`` means for the claimer holding ``token``."""
    value = text(reply)
    if value == token:
        return ClaimState.CLAIMED
    if value is None or value.startswith(CLAIM_PREFIX):
        # None cannot happen (the script is atomic); treating it as someone else's claim
        # leaves the message for later rather than risking processing it twice.
        return ClaimState.BUSY
    return ClaimState.DONE


def check_options(expire: Any, socket_timeout: float, socket_connect_timeout: float) -> None:
    """Refuse options that would make a cache misbehave instead of failing later."""
    if expire is not None and (not isinstance(expire, int) or expire <= 0):
        raise ConfigurationError(
            f"expire must be a positive number of seconds or None, got {expire!r}"
        )
    if socket_timeout <= 0 or socket_connect_timeout <= 0:
        raise ConfigurationError(
            "socket timeouts must be positive: an unbounded wait "
            "would hang the dispatcher when Redis stops answering"
        )


def cache_error(where: str, action: str, key: str, exc: Exception) -> DeduplicationCacheError:
    """The error a cache raises when Redis failed; ``where`` is already redacted."""
    cause = str(exc).rstrip(".")
    return DeduplicationCacheError(
        f"Redis deduplication cache at {where} failed to {action} {key!r}: {cause}. "
        "Check that Redis is running and reachable; messages are left for redelivery "
        "meanwhile (unless the dispatcher fails open)."
    )


def text(raw: Any) -> str | None:
    """A Redis reply as text (``None`` stays ``None``)."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)


def redact(url: str) -> str:
    """``url`` without its credentials, for errors, logs and ``repr``."""
    return redact_url(url)


__all__ = [
    "CLAIM_SCRIPT",
    "DEFAULT_EXPIRE",
    "RELEASE_SCRIPT",
    "RENEW_SCRIPT",
    "cache_error",
    "check_options",
    "claim_state",
    "lease_ms",
    "new_token",
    "redact",
    "text",
]
