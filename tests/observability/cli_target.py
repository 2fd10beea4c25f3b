"""A consumer for ``melange consume`` in the CLI tests: odd numbers fail (twice, then they
are dead-lettered), even ones succeed."""

from __future__ import annotations

from typing import Any

from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy


def _handle(payload: dict[str, Any]) -> None:
    if payload["n"] % 2:
        raise ValueError(f"odd number {payload['n']}")


consumer = Consumer(
    on_message=_handle,
    name="odd-refuser",
    failure_policy=FailurePolicy(max_attempts=2, initial_delay=0.0, jitter=0.0),
)
