"""Messaging backends: the contract, the default-backend manager, the factory, and adapters.

Adapters that need a broker client are imported on first use, so ``import melange.backends``
never requires boto3 or pika.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from melange.backends.backend_manager import BackendManager
from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend

if TYPE_CHECKING:
    from melange.backends.rabbitmq.rabbitmq_backend import RabbitMQBackend
    from melange.backends.sqlite import SQLiteBackend
    from melange.backends.sqs.backend import AWSBackend
    from melange.backends.sqs.localsqs import LocalSQSBackend
    from melange.testing.link import link_synchronously

_LAZY = {
    "AWSBackend": ("melange.backends.sqs.backend", "aws"),
    "LocalSQSBackend": ("melange.backends.sqs.localsqs", "aws"),
    "RabbitMQBackend": ("melange.backends.rabbitmq.rabbitmq_backend", "rabbitmq"),
    "SQLiteBackend": ("melange.backends.sqlite", None),
    # Lives with the testing helpers, which import the dispatcher (and so this package).
    "link_synchronously": ("melange.testing.link", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, extra = _LAZY[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if extra is None or exc.name == module_name:
                raise
            raise ImportError(
                f"{name} needs the {extra!r} extra: pip install 'melange[{extra}]' ({exc})"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module 'melange.backends' has no attribute {name!r}")


__all__ = [
    "AWSBackend",
    "BackendCapabilities",
    "BackendManager",
    "InMemoryMessagingBackend",
    "LocalSQSBackend",
    "MessagingBackend",
    "MessagingBackendFactory",
    "RabbitMQBackend",
    "SQLiteBackend",
    "link_synchronously",
]
