"""``melange queues`` and ``melange dlq`` on the Kafka backend, each test on a tansu broker of
its own (the suite's queue names are the broker's topic names)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tansu_broker import TEST_OPTIONS, start_tansu

from inspection_suite import Inspected, InspectionSuite
from melange.backends.kafka import KafkaBackend

pytestmark = pytest.mark.kafka


class TestInspectionOnKafka(InspectionSuite):
    # A queue's backlog is its group's lag, which says nothing of what is handed out.
    counts_in_flight = False

    @pytest.fixture
    def inspected(self, tmp_path: Path) -> Iterator[Inspected]:
        with start_tansu(tmp_path / "tansu.log") as url:
            options = "&".join(f"{key}={value}" for key, value in TEST_OPTIONS.items())
            yield Inspected(
                f"{url}?{options}",
                lambda: KafkaBackend(url, **TEST_OPTIONS),  # type: ignore[arg-type]
            )
