"""Infrastructure used by dispatchers: deduplication caches."""
