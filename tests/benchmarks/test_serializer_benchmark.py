"""The serializer benchmark runs end to end and reports every contender."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import serializers as bench  # noqa: E402


def test_each_contender_gives_back_what_it_published_and_is_timed() -> None:
    results = bench.measure(count=40, rounds=1)
    assert set(results) == {"json (dict)", "dataclass", "pydantic", "msgspec"}
    for figures in results.values():
        assert set(figures) == {"publish", "consume", "codec"}
        assert all(value > 0 for value in figures.values())
    text = bench.table(results)
    assert text.count("\n") == 5
    assert "| json (dict) |" in text and "| 1.00x |" in text


def test_the_command_refuses_empty_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])
    assert "--messages and --rounds must be at least 1" in capsys.readouterr().err
