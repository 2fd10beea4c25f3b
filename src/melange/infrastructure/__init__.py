"""The original documentation's path to the deduplication caches: see
:mod:`melange.deduplication`."""
