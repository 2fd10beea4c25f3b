"""Schema evolution between two versions of a service on the in-memory backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from schema_evolution_support import KINDS, SCENARIOS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_schema_evolution_in_memory(
    scenario: Callable[[MessagingBackend, str], None], kind: str
) -> None:
    scenario(InMemoryMessagingBackend(), kind)
