"""A contender that prepares before each operation, for the harness tests (run in a worker)."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.contenders.memory import MelangeMemory

#: How long the preparation takes: longer than the timed operations of the test.
PREPARATION_SECONDS = 0.5


class PreparedMemory(MelangeMemory):
    """The in-memory contender, with a slow ``before_operation`` that records its calls."""

    def setup(self) -> dict[str, str]:
        self.prepared: list[str] = []
        return super().setup()

    def before_operation(self, op: str) -> None:
        self.prepared.append(op)
        time.sleep(PREPARATION_SECONDS)

    def op_prepared(self) -> dict[str, Any]:
        """The operations prepared for so far (this one included)."""
        return {"seconds": 0.0, "n": 0, "ops": list(self.prepared)}
