"""Schema evolution on RabbitMQ: a version 1 publisher with a version 2 consumer, and the
reverse, the schema version travelling in the AMQP headers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.rabbitmq import RabbitMQBackend
from schema_evolution_support import KINDS, SCENARIOS

pytestmark = pytest.mark.rabbitmq


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_schema_evolution_on_rabbitmq(
    scenario: Callable[[MessagingBackend, str], None], kind: str, rabbit: RabbitMQBackend
) -> None:
    scenario(rabbit, kind)
