"""The probe the testing guide's example imports (see :mod:`melange.testing.probe`)."""

from melange.testing.probe import PredicateProbe, Probe, ProbeTimeoutError, wait_until

__all__ = ["PredicateProbe", "Probe", "ProbeTimeoutError", "wait_until"]
