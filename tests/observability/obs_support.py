"""Helpers of the observability tests that are not fixtures (importable by name)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from melange.backends.interfaces import MessagingBackend
from melange.models import QueueWrapper

_TESTS = Path(__file__).resolve().parent.parent


def load(name: str, relative: str) -> ModuleType:
    """A module of another test folder, by path (every conftest is named "conftest")."""
    spec = importlib.util.spec_from_file_location(name, _TESTS / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Spans:
    """A tracer provider whose finished spans are kept in memory."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def finished(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[Any]:
        return [s for s in self.finished() if s.name.startswith(prefix)]


@dataclass
class Broker:
    """A backend and the queues a test declared on it (deleted afterwards)."""

    kind: str
    backend: MessagingBackend
    #: Opens another backend on the same broker (for a second process or an asyncio twin).
    url: str | None = None
    declared: list[QueueWrapper] = field(default_factory=list)

    def queue(self, dead_letter: bool = True) -> str:
        name = f"obs-{uuid.uuid4().hex[:10]}"
        queue, dlq = self.backend.declare_queue(
            name, dead_letter_queue_name=f"{name}-dlq" if dead_letter else None
        )
        self.declared.append(queue)
        if dlq is not None:
            self.declared.append(dlq)
        return name

    def cleanup(self) -> None:
        for queue in self.declared:
            with contextlib.suppress(Exception):
                self.backend.delete_queue(queue)
