"""Access to the real services of the machine, for tests that need one.

A uniquely named module (not ``conftest``): test modules in sub-folders import it by name,
and several ``conftest`` modules would shadow each other.
"""

from __future__ import annotations

import os
import socket

import pytest

SERVICES = {
    "rabbitmq": ("127.0.0.1", 5672),
    "redis": ("127.0.0.1", 6379),
    "postgres": ("127.0.0.1", 5432),
    "nats": ("127.0.0.1", 4222),
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
