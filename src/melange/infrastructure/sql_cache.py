"""Moved to :mod:`melange.deduplication.sql_cache`; this path keeps working."""

from melange.deduplication.sql_cache import *  # noqa: F403
from melange.deduplication.sql_cache import __all__ as __all__
