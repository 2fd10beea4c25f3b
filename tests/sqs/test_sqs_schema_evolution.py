"""Schema evolution on SQS/SNS: a version 1 publisher with a version 2 consumer, and the
reverse, the schema version travelling as a message attribute through the SNS envelope."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.sqs import AWSBackend
from schema_evolution_support import KINDS, SCENARIOS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_schema_evolution_on_sqs(
    scenario: Callable[[MessagingBackend, str], None], kind: str, aws_backend: AWSBackend
) -> None:
    scenario(aws_backend, kind)
