"""The backend manager under the path the original documentation uses."""

from melange.backends.backend_manager import BackendManager

__all__ = ["BackendManager"]
