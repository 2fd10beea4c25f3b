"""The in-memory backend passes the shared conformance suite."""

from collections.abc import Iterator

import pytest

from melange.backends.memory import InMemoryMessagingBackend
from melange.testing.conformance import BackendConformance


class TestInMemoryConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Iterator[InMemoryMessagingBackend]:
        backend = InMemoryMessagingBackend()
        yield backend
        backend.close_connection()
