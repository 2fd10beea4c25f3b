"""Running the real ``melange`` command in tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

#: The console script installed next to the interpreter running the tests.
MELANGE = Path(sys.executable).with_name("melange")


def melange_command(*args: str) -> list[str]:
    """The argv that runs ``melange ARGS`` (the console script, else ``python -m``)."""
    if MELANGE.exists():
        return [str(MELANGE), *args]
    return [sys.executable, "-m", "melange.cli", *args]


def run_melange(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``melange ARGS`` to completion and capture its output."""
    environment = {k: v for k, v in os.environ.items() if k != "MELANGE_BACKEND_URL"}
    environment.update(env or {})
    return subprocess.run(
        melange_command(*args),
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sqlite_url(path: Path) -> str:
    """The backend URL of an SQLite file at an absolute path."""
    return f"sqlite:///{path.resolve()}"


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """The command failed with a single ``error:`` line containing every fragment."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
