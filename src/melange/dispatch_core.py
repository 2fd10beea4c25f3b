"""Moved to :mod:`melange.dispatch.decisions`; this path keeps working."""

from melange.dispatch.decisions import *  # noqa: F403
from melange.dispatch.decisions import __all__ as __all__
