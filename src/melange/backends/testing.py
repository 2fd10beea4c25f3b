"""In-memory messaging for tests; ``link_synchronously`` lives in :mod:`melange.testing.link`.

This is the import path of the original documentation, and keeps working.
"""

from melange.backends.memory import InMemoryMessagingBackend
from melange.testing.link import link_synchronously

__all__ = ["InMemoryMessagingBackend", "link_synchronously"]
