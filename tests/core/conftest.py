"""Fixtures shared by the core tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend


@pytest.fixture(params=["memory", "sqlite"])
def embedded_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    """Each embedded backend in turn: in memory, and SQLite on a file of the test's own,
    whose waiting receives look for due messages every 20 ms (delayed messages are seen
    within that of their time)."""
    made: MessagingBackend
    if request.param == "memory":
        made = InMemoryMessagingBackend()
    else:
        made = SQLiteBackend(tmp_path / "broker.db", poll_interval=0.02)
    yield made
    made.close_connection()
