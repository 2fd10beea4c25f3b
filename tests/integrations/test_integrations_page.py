"""The code the integrations page quotes from the examples is the examples' code."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
EXCERPT = re.compile(r"an excerpt of (?P<path>\S+)")
# The examples' lines may end with mypy's ignores for Django's untyped API; quotes leave them out.
TYPE_IGNORE = re.compile(r"\s*# type: ignore\[[\w-]+\].*$")


def _doc_blocks() -> ModuleType:
    # Loaded by path: tests/docs is not on the import path of this directory's tests.
    spec = importlib.util.spec_from_file_location(
        "melange_integrations_doc_blocks", ROOT / "tests" / "docs" / "doc_blocks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while being defined.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _lines(text: str) -> list[str]:
    return [TYPE_IGNORE.sub("", line).strip() for line in text.splitlines() if line.strip()]


def _contains(whole: list[str], part: list[str]) -> bool:
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def test_every_excerpt_on_the_page_is_in_the_file_it_names() -> None:
    page = _doc_blocks().parse(
        (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8"), "integrations.md"
    )
    excerpts = [
        (block, match["path"])
        for block in page.blocks
        if block.marker == "not-run" and (match := EXCERPT.search(block.marker_arg))
    ]
    assert len(excerpts) >= 4, "the page quotes the FastAPI and Django examples"
    for block, path in excerpts:
        source = (ROOT / path.rstrip(",")).read_text(encoding="utf-8")
        assert _contains(_lines(source), _lines(block.code)), (
            f"{block.where} is not a verbatim excerpt of {path}"
        )
