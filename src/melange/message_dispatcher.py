"""Message dispatchers (the threaded one); they live in :mod:`melange.dispatch.threaded`.

This is the import path of the original documentation, and keeps working.
"""

from melange.dispatch.stats import DispatcherStats
from melange.dispatch.threaded import ConsumerHandler, MessageDispatcher, SimpleMessageDispatcher

__all__ = ["ConsumerHandler", "DispatcherStats", "MessageDispatcher", "SimpleMessageDispatcher"]
