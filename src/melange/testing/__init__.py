"""Helpers for testing code that uses Melange.

- :mod:`melange.testing.harness`: :class:`Harness`, which records what services published,
  consumed, retried and dead-lettered, and asserts on it; :class:`FakeClock`
  (:mod:`melange.testing.clock`) skips delays on the in-memory backend.
- :mod:`melange.testing.pytest_plugin`: the fixtures ``melange_backend``,
  ``melange_harness`` and ``melange_clock`` (loaded by pytest through the ``pytest11``
  entry point; ``--melange-backend=URL`` picks the backend).
- :mod:`melange.testing.probe`: wait for asynchronous effects (``Probe``, ``wait_until``).
- :mod:`melange.testing.conformance`: the test suite every messaging backend must pass
  (needs pytest).
- :mod:`melange.testing.link`: :func:`link_synchronously`, synchronous in-memory dispatch
  (also importable from ``melange.backends.testing``, as in the original documentation).
- :mod:`melange.testing.blocking`: :func:`~melange.testing.blocking.as_blocking`, an
  asynchronous backend as a blocking one (to run the conformance suite on it, or to use it
  from blocking code).
"""

from melange.testing.clock import FakeClock
from melange.testing.harness import Harness
from melange.testing.link import link_synchronously
from melange.testing.probe import PredicateProbe, Probe, ProbeTimeoutError, wait_until
from melange.testing.records import ConsumedMessage, PublishedMessage, SettledMessage

__all__ = [
    "ConsumedMessage",
    "FakeClock",
    "Harness",
    "PredicateProbe",
    "Probe",
    "ProbeTimeoutError",
    "PublishedMessage",
    "SettledMessage",
    "link_synchronously",
    "wait_until",
]
