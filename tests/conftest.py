"""Shared test fixtures: access to the real services of the machine.

A test that needs a service calls :func:`require_service`. When the service is down the test
is skipped with a loud reason locally, and fails under CI (``CI=true``): a missing service
never passes silently there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from melange.backends.backend_manager import BackendManager

SERVICES = {
    "rabbitmq": ("127.0.0.1", 5672),
    "redis": ("127.0.0.1", 6379),
    "postgres": ("127.0.0.1", 5432),
}


def service_up(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str) -> tuple[str, int]:
    """Return (host, port) of a machine service, or fail (CI) / skip (locally) loudly."""
    host, port = SERVICES[name]
    if not service_up(host, port):
        message = f"SERVICE MISSING: {name} is not reachable on {host}:{port}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return host, port


@pytest.fixture(autouse=True)
def _reset_backend_manager() -> Iterator[None]:
    """No test leaks a default backend into another."""
    yield
    BackendManager().reset()
