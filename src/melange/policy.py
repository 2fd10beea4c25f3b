"""Moved to :mod:`melange.dispatch.policy`; this path keeps working."""

from melange.dispatch.policy import DEFAULT_POLICY, FailurePolicy

__all__ = ["DEFAULT_POLICY", "FailurePolicy"]
