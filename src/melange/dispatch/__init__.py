"""Dispatching: from a received message to its settlement, in one engine.

- :mod:`~melange.dispatch.engine`: every decision, as generators of effects (no I/O);
- :mod:`~melange.dispatch.decisions`: the pure functions it uses (decoding, routing, weighing
  outcomes against the policy);
- :mod:`~melange.dispatch.policy`: the failure policy;
- :mod:`~melange.dispatch.effects`: what the engine asks a driver to do;
- :mod:`~melange.dispatch.threaded` and :mod:`~melange.dispatch.aio`: the two drivers,
  :class:`MessageDispatcher` (threads) and :class:`AsyncMessageDispatcher` (asyncio);
- :mod:`~melange.dispatch.middleware`: hooks around every message;
- :mod:`~melange.dispatch.leases`: renewing message leases and deduplication claims;
- :mod:`~melange.dispatch.stats`: the counters.
"""

from melange.dispatch.aio import AsyncMessageDispatcher
from melange.dispatch.middleware import Middleware
from melange.dispatch.policy import DEFAULT_POLICY, FailurePolicy
from melange.dispatch.stats import DispatcherStats
from melange.dispatch.threaded import ConsumerHandler, MessageDispatcher, SimpleMessageDispatcher

__all__ = [
    "DEFAULT_POLICY",
    "AsyncMessageDispatcher",
    "ConsumerHandler",
    "DispatcherStats",
    "FailurePolicy",
    "MessageDispatcher",
    "Middleware",
    "SimpleMessageDispatcher",
]
