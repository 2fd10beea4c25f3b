"""Shared test fixtures: access to the real services of the machine.

A test that needs a service calls :func:`require_service`. When the service is down the test
is skipped with a loud reason locally, and fails under CI (``CI=true``): a missing service
never passes silently there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from melange.backends.backend_manager import BackendManager

# Re-exported for older imports; tests import it from ``service_check``.
from service_check import SERVICES, require_service, service_up  # noqa: F401


@pytest.fixture(autouse=True)
def _reset_backend_manager() -> Iterator[None]:
    """No test leaks a default backend into another."""
    yield
    BackendManager().reset()
