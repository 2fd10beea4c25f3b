"""The SQLite backend passes the shared conformance suite, on a file and in memory."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.testing.conformance import BackendConformance


class TestSQLiteFileConformance(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[SQLiteBackend]:
        backend = SQLiteBackend(tmp_path / "melange.db")
        yield backend
        backend.close_connection()

    @pytest.fixture
    def make_backend(
        self, backend: SQLiteBackend, tmp_path: Path
    ) -> Iterator[Callable[[], MessagingBackend]]:
        # Each concurrent consumer opens the file on its own, as separate processes would.
        opened: list[SQLiteBackend] = []

        def make() -> MessagingBackend:
            other = SQLiteBackend(backend.path)
            opened.append(other)
            return other

        yield make
        for other in opened:
            other.close_connection()


class TestSQLiteInMemoryConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Iterator[SQLiteBackend]:
        backend = SQLiteBackend(":memory:")
        yield backend
        backend.close_connection()
