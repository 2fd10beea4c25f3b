"""Reading the code blocks of the documentation pages, with the markers that qualify them.

A fenced block may be preceded (blank lines aside) by one HTML comment marker:

- ``<!-- not-run: <reason> -->``: the block is not executed; the reason is required.
  Python blocks marked this way are still compiled, so they cannot hold syntax errors.
- ``<!-- requires: rabbitmq, redis -->``: the block needs these local services; the page is
  skipped locally (and fails under CI) when one is down.
- ``<!-- output -->``: the block is the standard output of the Python blocks run since the
  previous output block (or the start of the page), and is checked; ``...`` wildcards work
  as in console blocks (below).

Every other Python block is executed, in page order, in one namespace per page.

``console`` blocks are shell sessions and are executed too: each line starting with ``$ `` is
a command (a command ending in ``<<'EOF'`` takes the following lines up to ``EOF``), and the
lines after it, up to the next command, are its expected output (standard output and error
together). A line ``...`` in the expected output stands for any number of lines, and ``...``
inside a line for any text. Commands run with ``bash`` in the page's working directory;
``export`` commands carry over to the following commands of the page.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Files under docs/ written by the benchmark harness, not by hand.
GENERATED = ("benchmarks/",)

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|requires|output)\s*(?::(?P<arg>.*?))?-->\s*$")
PYTHON = {"python", "py", "python3"}
SHELL = "console"


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    lang: str
    code: str
    marker: str | None = None
    marker_arg: str = ""

    @property
    def is_python(self) -> bool:
        return self.lang in PYTHON

    @property
    def is_console(self) -> bool:
        return self.lang == SHELL

    @property
    def runs(self) -> bool:
        return (self.is_python or self.is_console) and self.marker not in ("not-run", "output")

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


@dataclass
class Page:
    """A documentation page and its code blocks."""

    path: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def services(self) -> list[str]:
        needed: list[str] = []
        for block in self.blocks:
            if block.marker == "requires":
                needed += [s.strip() for s in block.marker_arg.split(",") if s.strip()]
        return list(dict.fromkeys(needed))


def parse(text: str, page: str = "<text>") -> Page:
    """Split Markdown ``text`` into its fenced code blocks."""
    lines = text.splitlines()
    result = Page(page)
    pending: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            if pending is not None:
                raise ValueError(f"docs/{page}:{i + 1}: one code block cannot take two markers")
            pending = (marker.group("kind"), (marker.group("arg") or "").strip())
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip():
                pending = None
            i += 1
            continue
        indent, ticks, lang = fence.group("indent"), fence.group("fence"), fence.group("lang")
        body: list[str] = []
        start = i + 1
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(ticks[0] * len(ticks)) and not close.strip(ticks[0]):
                break
            body.append(lines[i])
            i += 1
        else:
            raise ValueError(f"docs/{page}:{start}: code block is never closed")
        code = textwrap.dedent("\n".join(body)) if not indent else _strip(body, indent)
        kind, arg = pending if pending else (None, "")
        result.blocks.append(Block(page, start, lang.lower(), code + "\n", kind, arg))
        pending = None
        i += 1
    return result


def _strip(body: list[str], indent: str) -> str:
    return "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in body)


def pages() -> list[Page]:
    """Every hand-written page of the documentation, parsed."""
    found = []
    for path in sorted(DOCS.rglob("*.md")):
        rel = path.relative_to(DOCS).as_posix()
        if rel.startswith(GENERATED):
            continue
        found.append(parse(path.read_text(encoding="utf-8"), rel))
    return found


@dataclass
class Command:
    """One command of a console block and the output shown for it."""

    line: str
    output: list[str]


def commands(code: str) -> list[Command]:
    """Split a console block into its commands and their expected output."""
    found: list[Command] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            if found:
                found[-1].output.append(line)
            elif line.strip():
                raise ValueError(f"console block starts with output, not a command: {line!r}")
            continue
        command = line[2:]
        while command.endswith("\\") and i < len(lines):
            command = command[:-1] + "\n" + lines[i]
            i += 1
        heredoc = re.search(r"<<\s*'?(\w+)'?\s*$", command)
        if heredoc:
            end = heredoc.group(1)
            body: list[str] = []
            while i < len(lines) and lines[i] != end:
                body.append(lines[i])
                i += 1
            i += 1
            command = "\n".join([command, *body, end])
        found.append(Command(command, []))
    return found


def output_pattern(expected: list[str]) -> re.Pattern[str]:
    """A regex for the expected output lines, with ``...`` wildcards."""
    parts: list[str] = []
    for line in expected:
        line = line.rstrip()
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts), re.DOTALL)
