"""Moved to :mod:`melange.deduplication.cache`; this documented path keeps working."""

from typing import TYPE_CHECKING, Any

from melange.deduplication import cache as _cache
from melange.deduplication.cache import (
    CLAIM_PREFIX,
    DONE,
    ClaimState,
    DeduplicationCache,
    InMemoryCache,
    NullCache,
)

if TYPE_CHECKING:
    from melange.deduplication.redis_cache import RedisCache


def __getattr__(name: str) -> Any:
    # RedisCache stays lazy: importing this module never needs redis-py.
    return getattr(_cache, name)


__all__ = [
    "CLAIM_PREFIX",
    "DONE",
    "ClaimState",
    "DeduplicationCache",
    "InMemoryCache",
    "NullCache",
    "RedisCache",
]
