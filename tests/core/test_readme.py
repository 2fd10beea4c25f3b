"""The README's example runs as written, and its two commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    text = (ROOT / "README.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out == "paid 42\n"


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.findall(r"```bash\n(.*?)```", text, re.S)[0].splitlines()
    assert first_block[0].startswith("make demo")
    assert first_block[1].startswith("make test")
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile
    assert "\ntest:" in makefile
