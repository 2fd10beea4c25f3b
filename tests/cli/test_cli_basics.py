"""The command as a whole: entry points, help, backend selection, one-line errors."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cli_support import assert_one_line_error, run_melange, sqlite_url
from click.testing import CliRunner

from melange import __version__
from melange.backends.sqlite import SQLiteBackend
from melange.cli import cli


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
    return found


COMMANDS = all_commands(cli)


def test_every_documented_command_exists() -> None:
    expected = {
        ("consume",),
        ("publish",),
        ("queues",),
        ("queues", "list"),
        ("queues", "stats"),
        ("queues", "purge"),
        ("dlq",),
        ("dlq", "show"),
        ("dlq", "redrive"),
        ("init",),
        ("demo",),
    }
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output
    leaf = cli
    for name in command:
        assert isinstance(leaf, click.Group)
        leaf = leaf.commands[name]
    if not isinstance(leaf, click.Group) and command != ("demo",):
        assert "--backend-url" in result.output


def test_console_script_and_module_entry_point_report_the_version() -> None:
    script = run_melange("--version")
    module = subprocess.run(
        [sys.executable, "-m", "melange.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert script.returncode == module.returncode == 0
    assert __version__ in script.stdout
    assert script.stdout == module.stdout


def test_unknown_backend_url_scheme_is_a_one_line_error() -> None:
    result = run_melange("queues", "list", "--backend-url", "pulsar://localhost")
    assert_one_line_error(result, "unknown backend URL scheme 'pulsar'", "sqlite:///")


def test_bad_environment_url_names_the_variable() -> None:
    result = run_melange("queues", "list", env={"MELANGE_BACKEND_URL": "nonsense"})
    assert_one_line_error(result, "MELANGE_BACKEND_URL", "no scheme")


def test_file_that_is_not_a_database_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("shopping list: eggs, milk\n" * 100)
    result = run_melange("queues", "list", "--backend-url", sqlite_url(path))
    assert_one_line_error(result, "not an SQLite database")


def test_sqlite_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    result = run_melange("queues", "stats", "--backend-url", sqlite_url(path))
    assert_one_line_error(result, "not a Melange one")


def test_backend_url_falls_back_to_the_environment_then_to_the_embedded_file(
    tmp_path: Path,
) -> None:
    env_db = tmp_path / "env.db"
    SQLiteBackend(env_db).declare_queue("from-env")

    from_env = run_melange(
        "queues", "list", env={"MELANGE_BACKEND_URL": sqlite_url(env_db)}, cwd=tmp_path
    )
    default = run_melange("queues", "list", cwd=tmp_path)

    assert "from-env" in from_env.stdout
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "melange.db").exists()  # the embedded default, in the current directory
    assert "no queues" in default.stdout


def test_unexpected_failure_is_one_line_with_a_hint(tmp_path: Path) -> None:
    # A consumer factory with a bug is user code failing, reported in one line.
    (tmp_path / "buggy.py").write_text("def make(backend):\n    return 1 / 0\n")
    result = run_melange(
        "consume", "buggy:make", "--queue", "q", "--backend-url", "memory://", cwd=tmp_path
    )
    assert_one_line_error(result, "buggy:make(backend) failed", "ZeroDivisionError")
