"""Helpers for testing code that uses Melange.

- :mod:`melange.testing.probe`: wait for asynchronous effects (``Probe``, ``wait_until``).
- :mod:`melange.testing.conformance`: the test suite every messaging backend must pass
  (needs pytest).
- :mod:`melange.testing.link`: :func:`link_synchronously`, synchronous in-memory dispatch
  (also importable from ``melange.backends.testing``, as in the original documentation).
- :mod:`melange.testing.blocking`: :func:`~melange.testing.blocking.as_blocking`, an
  asynchronous backend as a blocking one (to run the conformance suite on it, or to use it
  from blocking code).
"""

from melange.testing.link import link_synchronously
from melange.testing.probe import PredicateProbe, Probe, ProbeTimeoutError, wait_until

__all__ = ["PredicateProbe", "Probe", "ProbeTimeoutError", "link_synchronously", "wait_until"]
