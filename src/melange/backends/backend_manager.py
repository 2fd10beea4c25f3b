"""A process-wide default backend, for code that does not pass one explicitly.

When none was set, the ``MELANGE_BACKEND_URL`` environment variable names one (see
:mod:`melange.backends.urls`).
"""

from __future__ import annotations

import os
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
    # Set when the backend was created here from MELANGE_BACKEND_URL: reset() closes it then.
    _owned: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> BackendManager:
        if cls._instance is None:
            with cls._instance_lock:
                if cls._instance is None:
                    instance = super().__new__(cls)
                    instance._backend = None
                    instance._owned = False
                    cls._instance = instance
        return cls._instance

    def use_backend(self, backend: MessagingBackend) -> None:
        """Make ``backend`` the default."""
        if not isinstance(backend, MessagingBackend):
            raise TypeError(f"expected a MessagingBackend, got {type(backend).__name__}")
        self._backend = backend
        self._owned = False

    set_default_backend = use_backend

    def get_backend(self) -> MessagingBackend:
        """The default backend.

        If none was set and ``MELANGE_BACKEND_URL`` is, the backend that URL names becomes
        the default (created once). Otherwise raises ``ConfigurationError`` saying how to set
        one.
        """
        backend = self._backend
        if backend is not None:
            return backend
        with self._instance_lock:
            if self._backend is None and os.environ.get("MELANGE_BACKEND_URL", "").strip():
                # Imported here: the URL module imports backends lazily, but keep it off the
                # import path of code that always passes a backend.
                from melange.backends.urls import backend_from_env

                self._backend = backend_from_env()
                self._owned = True
            if self._backend is None:
                raise ConfigurationError(
                    "no messaging backend given and no default is set: pass backend=..., call "
                    "BackendManager().use_backend(backend) at start-up, or set "
                    "MELANGE_BACKEND_URL (e.g. sqlite:///melange.db)"
                )
            return self._backend

    get_default_backend = get_backend

    def reset(self) -> None:
        """Forget the default backend (for tests); closes it if it came from the environment."""
        backend, owned = self._backend, self._owned
        self._backend = None
        self._owned = False
        if backend is not None and owned:
            backend.close_connection()
