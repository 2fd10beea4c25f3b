"""Build-time content for the documentation site.

Pages contain markers that this MkDocs hook replaces while the site is built, so generated
facts cannot drift from the code:

- ``<!-- capabilities: package.module:ClassName -->`` becomes a table of what that backend's
  :class:`~melange.backends.interfaces.BackendCapabilities` descriptor declares, one row per
  capability, explained with the descriptor's own docstring.
- ``<!-- capabilities-matrix -->`` becomes one table comparing every backend listed in
  :data:`BACKENDS` whose module can be imported.
- ``<!-- signature: package.module:ClassName -->`` becomes the class's constructor signature
  with its defaults, as a code block.
- ``<!-- benchmark-results -->`` becomes the contents of ``docs/benchmarks/results.md`` and
  the chart ``docs/benchmarks/chart.png``, when the benchmark harness has written them, then
  ``docs/benchmarks/scale.md`` (the scale probe's results) when it exists.

A marker that cannot be filled fails the build with the reason; nothing is left out quietly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import re
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

from melange.backends.interfaces import BackendCapabilities

#: Backends of the comparison table: (column title, "module:Class").
BACKENDS = [
    ("In-memory", "melange.backends.memory:InMemoryMessagingBackend"),
    ("SQLite", "melange.backends.sqlite:SQLiteBackend"),
    ("SQS/SNS", "melange.backends.sqs.backend:AWSBackend"),
    ("RabbitMQ", "melange.backends.rabbitmq.backend:RabbitMQBackend"),
    ("Redis Streams", "melange.backends.redis_streams.backend:RedisStreamsBackend"),
    ("NATS JetStream", "melange.backends.nats.backend:NATSBackend"),
    ("Kafka", "melange.backends.kafka.backend:KafkaBackend"),
]

_CAPABILITIES = re.compile(r"<!--\s*capabilities:\s*([\w.]+):(\w+)\s*-->")
_MATRIX = re.compile(r"<!--\s*capabilities-matrix\s*-->")
_BENCHMARKS = re.compile(r"<!--\s*benchmark-results\s*-->")
_SIGNATURE = re.compile(r"<!--\s*signature:\s*([\w.]+):(\w+)\s*-->")


def _field_descriptions() -> dict[str, str]:
    """Each capability's meaning, read from the ``Attributes:`` section of its docstring."""
    doc = inspect.getdoc(BackendCapabilities) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    found: dict[str, str] = {}
    current: str | None = None
    for line in section.splitlines():
        match = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if match:
            current = match.group(1)
            found[current] = match.group(2).strip()
        elif current is not None and line.strip():
            found[current] += " " + line.strip()
    # Sphinx-style roles read badly in a table cell; keep their text only.
    return {k: re.sub(r":\w+:`~?([^`]+)`", r"``\1``", v) for k, v in found.items()}


def _load(target: str) -> type[Any]:
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if not isinstance(cls, type):
        raise PluginError(f"{target} is not a class")
    return cls


def capabilities_of(cls: type[Any]) -> BackendCapabilities:
    """The capability descriptor of a backend class, without connecting to any broker.

    The table describes the backend with its default settings. In order: a ``CAPABILITIES``
    or class-level ``capabilities`` value; the ``capabilities`` property evaluated on an
    instance whose ``__init__`` did not run (so no broker client is created) but which holds
    the constructor's default for each setting (``queue_type="quorum"`` is set as
    ``_queue_type`` and ``queue_type``); and, for the embedded backends, a real instance with
    default settings (SQLite on a temporary file).
    """
    for attribute in ("CAPABILITIES", "capabilities"):
        value = inspect.getattr_static(cls, attribute, None)
        if isinstance(value, BackendCapabilities):
            return value
    prop = inspect.getattr_static(cls, "capabilities", None)
    if isinstance(prop, property) and prop.fget is not None:
        try:
            value = prop.fget(_unconnected(cls))
        except AttributeError:
            value = None  # the descriptor reads settings that are not constructor defaults
        if isinstance(value, BackendCapabilities):
            return value
    with tempfile.TemporaryDirectory() as tmp:
        if cls.__name__ == "SQLiteBackend":
            instance = cls(str(Path(tmp) / "capabilities.db"))
        elif cls.__name__ == "InMemoryMessagingBackend":
            instance = cls()
        else:
            raise PluginError(
                f"cannot read the capabilities of {cls.__name__} without a broker: give it a "
                "CAPABILITIES class attribute or a capabilities property built from constants"
            )
        try:
            value = instance.capabilities
        finally:
            instance.close_connection()
    if not isinstance(value, BackendCapabilities):
        raise PluginError(f"{cls.__name__}.capabilities is not a BackendCapabilities")
    return value


def _unconnected(cls: type[Any]) -> Any:
    """An instance of ``cls`` carrying its constructor defaults, without running ``__init__``."""
    instance = object.__new__(cls)
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.default is inspect.Parameter.empty or param.name == "self":
            continue
        for attribute in (f"_{param.name}", param.name):
            if inspect.getattr_static(cls, attribute, None) is None:
                # A read-only property or a slot refuses the value: leave it alone.
                with contextlib.suppress(AttributeError):
                    setattr(instance, attribute, param.default)
    return instance


def _cell(value: object) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "no limit"
    if isinstance(value, int):
        return f"{value:,}"
    return f"`{value}`"


def capability_table(caps: BackendCapabilities) -> str:
    """A Markdown table of one backend's capabilities."""
    meanings = _field_descriptions()
    rows = ["| Capability | Value | Meaning |", "|---|---|---|"]
    for field in dataclasses.fields(caps):
        meaning = meanings.get(field.name, "").replace("|", "\\|")
        rows.append(f"| `{field.name}` | {_cell(getattr(caps, field.name))} | {meaning} |")
    return "\n".join(rows)


def capability_matrix() -> str:
    """A Markdown table comparing the backends that can be imported in this environment."""
    columns: list[tuple[str, BackendCapabilities]] = []
    missing: list[str] = []
    for title, target in BACKENDS:
        try:
            cls = _load(target)
        except ImportError:
            missing.append(title)
            continue
        columns.append((title, capabilities_of(cls)))
    header = "| Capability | " + " | ".join(title for title, _ in columns) + " |"
    rows = [header, "|---|" + "---|" * len(columns)]
    for field in dataclasses.fields(BackendCapabilities):
        if field.name == "name":
            continue
        values = " | ".join(_cell(getattr(caps, field.name)) for _, caps in columns)
        rows.append(f"| `{field.name}` | {values} |")
    table = "\n".join(rows)
    if missing:
        table += "\n\n*Not yet available in this build: " + ", ".join(missing) + ".*"
    return table


class _Named:
    """A default shown by its dotted name (``time.monotonic``) rather than its ``repr``."""

    def __init__(self, name: str) -> None:
        self.name = name.lstrip(".")

    def __repr__(self) -> str:
        return self.name


def signature(cls: type[Any]) -> str:
    """The constructor call of ``cls`` with every parameter and default, without annotations."""
    params = []
    for param in inspect.signature(cls).parameters.values():
        default = param.default
        if default is not param.empty and callable(default) and hasattr(default, "__name__"):
            default = _Named(f"{getattr(default, '__module__', None) or ''}.{default.__name__}")
        params.append(param.replace(annotation=inspect.Parameter.empty, default=default))
    text = str(inspect.Signature(params))
    one_line = f"{cls.__name__}{text}"
    if len(one_line) <= 90:
        return f"```python\n{one_line}\n```"
    # One parameter per line once the call is too long to read on one.
    inner = text[1:-1].split(", ")
    lines = [f"{cls.__name__}("] + [f"    {part}," for part in inner] + [")"]
    return "```python\n" + "\n".join(lines) + "\n```"


def benchmark_results(docs_dir: Path) -> str:
    """The benchmark harness's results page and chart, or a note saying how to produce them."""
    results = docs_dir / "benchmarks" / "results.md"
    chart = docs_dir / "benchmarks" / "chart.png"
    parts: list[str] = []
    if chart.exists():
        alt = "End-to-end throughput of Melange and of the other contenders, per suite"
        parts.append(f"![{alt}](benchmarks/chart.png)")
    if results.exists():
        text = results.read_text(encoding="utf-8")
        # The results file is a page of its own; its top heading would clash with ours.
        text = re.sub(r"\A\s*#\s[^\n]*\n", "", text)
        parts.append(text)
    scale = docs_dir / "benchmarks" / "scale.md"
    if scale.exists():
        # Written by ``make bench-scale`` (python -m benchmarks.scale --out docs/benchmarks).
        text = re.sub(r"\A\s*#\s[^\n]*\n", "", scale.read_text(encoding="utf-8"))
        parts.append("### The embedded backends as queues grow\n\n" + text)
    if not parts:
        parts.append(
            '!!! note "No results recorded in this build"\n'
            "    The benchmark harness has not written `docs/benchmarks/results.md` yet. "
            "Run `make bench` to measure on your machine; the figures appear here on the next "
            "documentation build."
        )
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the markers of a page with generated Markdown."""

    def one(match: re.Match[str]) -> str:
        target = f"{match.group(1)}:{match.group(2)}"
        try:
            cls = _load(target)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{page.file.src_path}: cannot import {target}: {exc}") from exc
        return capability_table(capabilities_of(cls))

    def call(match: re.Match[str]) -> str:
        target = f"{match.group(1)}:{match.group(2)}"
        try:
            cls = _load(target)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{page.file.src_path}: cannot import {target}: {exc}") from exc
        return signature(cls)

    markdown = _CAPABILITIES.sub(one, markdown)
    markdown = _SIGNATURE.sub(call, markdown)
    markdown = _MATRIX.sub(lambda _: capability_matrix(), markdown)
    markdown = _BENCHMARKS.sub(lambda _: benchmark_results(Path(config["docs_dir"])), markdown)
    return markdown
