"""Helpers for testing code that uses Melange.

- :mod:`melange.testing.probe`: wait for asynchronous effects (``Probe``, ``wait_until``).
- :mod:`melange.testing.conformance`: the test suite every messaging backend must pass
  (needs pytest).
- :func:`melange.backends.testing.link_synchronously`: synchronous in-memory dispatch.
"""

from melange.testing.probe import PredicateProbe, Probe, ProbeTimeoutError, wait_until

__all__ = ["PredicateProbe", "Probe", "ProbeTimeoutError", "wait_until"]
