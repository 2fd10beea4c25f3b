"""The build hook fills the documentation's generated parts from the code, or fails loudly."""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mkdocs.exceptions import PluginError

from melange.backends.interfaces import BackendCapabilities
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend

HOOK = Path(__file__).resolve().parents[2] / "docs" / "hooks" / "melange_docs.py"


def _load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("melange_docs_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _load_hook()


class _Page:
    class file:
        src_path = "fake.md"


def test_a_capability_table_has_one_row_per_capability_with_its_meaning() -> None:
    table = hook.capability_table(InMemoryMessagingBackend().capabilities)
    rows = table.splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == [
        f.name for f in dataclasses.fields(BackendCapabilities)
    ]
    dead_letter = next(row for row in rows if "`native_dead_letter`" in row)
    assert "| yes |" in dead_letter
    assert "max_receive_count" in dead_letter  # the meaning, from the docstring


def test_embedded_backends_are_described_with_their_default_settings() -> None:
    assert hook.capabilities_of(InMemoryMessagingBackend) == InMemoryMessagingBackend().capabilities
    sqlite = hook.capabilities_of(SQLiteBackend)
    assert sqlite.name == "sqlite"
    assert sqlite.persistent


def test_broker_backends_are_described_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the hook opened a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    from melange.backends.rabbitmq.rabbitmq_backend import RabbitMQBackend
    from melange.backends.sqs.backend import AWSBackend

    rabbit = hook.capabilities_of(RabbitMQBackend)
    assert (rabbit.name, rabbit.native_dead_letter, rabbit.visibility_timeout) == (
        "rabbitmq",
        True,  # new queues are quorum queues by default
        False,
    )
    sqs = hook.capabilities_of(AWSBackend)
    assert (sqs.name, sqs.max_batch_size) == ("sqs", 10)


def test_a_marker_naming_a_missing_backend_fails_the_build() -> None:
    with pytest.raises(PluginError, match=r"cannot import melange\.nowhere:Backend"):
        hook.on_page_markdown(
            "<!-- capabilities: melange.nowhere:Backend -->", _Page(), {"docs_dir": "."}, None
        )


def test_benchmark_results_are_included_when_the_harness_wrote_them(tmp_path: Path) -> None:
    assert "No results recorded" in hook.benchmark_results(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.md").write_text("# Benchmark results\n\n| a |\n|---|\n")
    (tmp_path / "benchmarks" / "chart.png").write_bytes(b"\x89PNG")
    text = hook.benchmark_results(tmp_path)
    assert "](benchmarks/chart.png)" in text
    assert "| a |" in text
    assert "# Benchmark results" not in text  # the page has its own title


def test_a_signature_marker_shows_the_constructor_with_its_defaults() -> None:
    text = hook.on_page_markdown(
        "<!-- signature: melange.backends.memory:InMemoryMessagingBackend -->",
        _Page(),
        {"docs_dir": "."},
        None,
    )
    assert text.startswith("```python\nInMemoryMessagingBackend(")
    assert "visibility_timeout=30.0," in text
    assert "clock=time.monotonic," in text
