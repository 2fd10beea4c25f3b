"""Moved to :mod:`melange.dispatch.leases`; this path keeps working."""

from melange.dispatch.leases import Heartbeat

__all__ = ["Heartbeat"]
