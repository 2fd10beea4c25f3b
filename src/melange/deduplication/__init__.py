"""Deduplication: remember which consumer processed which message, across processes.

- :mod:`~melange.deduplication.cache`: the cache interface, claims, and the in-memory cache;
- :mod:`~melange.deduplication.redis_cache`: :class:`RedisCache` (needs ``melange[redis]``);
- :mod:`~melange.deduplication.sql_cache`: :class:`SQLDeduplicationCache` (SQLite,
  PostgreSQL), which can record success in the handler's own transaction.

``melange.infrastructure``, the original documentation's path, keeps working.
"""
