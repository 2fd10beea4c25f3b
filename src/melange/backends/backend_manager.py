"""A process-wide default backend, for code that does not pass one explicitly."""

from __future__ import annotations

import threading
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.exceptions import ConfigurationError


class BackendManager:
    """Holds the default backend of the process. ``BackendManager()`` is always the same object.

    Set it once at start-up; publishers and dispatchers created without ``backend=`` use it::

        BackendManager().use_backend(InMemoryMessagingBackend())
    """

    _instance: BackendManager | None = None
    _instance_lock = threading.Lock()
    _backend: MessagingBackend | None

    def __new__(cls, *args: Any, **kwargs: Any) -> BackendManager:
        if cls._instance is None:
            with cls._instance_lock:
                if cls._instance is None:
                    instance = super().__new__(cls)
                    instance._backend = None
                    cls._instance = instance
        return cls._instance

    def use_backend(self, backend: MessagingBackend) -> None:
        """Make ``backend`` the default."""
        if not isinstance(backend, MessagingBackend):
            raise TypeError(f"expected a MessagingBackend, got {type(backend).__name__}")
        self._backend = backend

    set_default_backend = use_backend

    def get_backend(self) -> MessagingBackend:
        """The default backend; raises ``ConfigurationError`` saying how to set one if unset."""
        if self._backend is None:
            raise ConfigurationError(
                "no messaging backend given and no default is set: pass backend=... or call "
                "BackendManager().use_backend(backend) at start-up"
            )
        return self._backend

    get_default_backend = get_backend

    def reset(self) -> None:
        """Forget the default backend (for tests)."""
        self._backend = None
