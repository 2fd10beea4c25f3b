"""Moved to :mod:`melange.deduplication.redis_cache`; this path keeps working."""

from melange.deduplication.redis_cache import DEFAULT_EXPIRE, RedisCache

__all__ = ["DEFAULT_EXPIRE", "RedisCache"]
