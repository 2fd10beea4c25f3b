"""Every code example of the documentation runs, and the site builds.

Each page's Python blocks run in order in one namespace (a page is one test), against the
in-memory or SQLite backend or the real local services the page declares with
``<!-- requires: ... -->``. See ``tests/docs/doc_blocks.py`` for the markers.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import types
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from doc_blocks import DOCS, Block, Page, commands, output_pattern, pages, parse

from service_check import require_service

ROOT = DOCS.parent
PAGES = pages()
LOCAL_SERVICES = {"rabbitmq", "redis", "postgres", "nats"}


def run_page(page: Page, workdir: Path | None = None) -> None:
    """Run the page's blocks in one fresh module and working directory; check the outputs."""
    name = "docs_page_" + re.sub(r"\W", "_", page.path.removesuffix(".md"))
    # A real module, so pickle, dataclasses and type hints can find what the page defines.
    module = types.ModuleType(name)
    module.__file__ = str(DOCS / page.path)
    sys.modules[name] = module
    captured = io.StringIO()
    exports: list[str] = []
    previous = Path.cwd()
    if workdir is not None:
        # Examples that write files (databases, config) write them here.
        os.chdir(workdir)
    try:
        for block in page.blocks:
            if block.marker == "output":
                expected = block.code.strip()
                got = captured.getvalue().strip()
                printed = "\n".join(line.rstrip() for line in got.splitlines()) + "\n"
                assert output_pattern(expected.splitlines()).fullmatch(printed), (
                    f"{block.where}: the output shown differs from what the examples print\n"
                    f"--- shown ---\n{expected}\n--- printed ---\n{got}"
                )
                captured = io.StringIO()
                continue
            if block.is_console and block.runs:
                run_console(block, exports)
                continue
            if not block.is_python:
                continue
            # Padding puts the Markdown line numbers in tracebacks.
            source = "\n" * block.line + block.code
            code = compile(source, str(DOCS / page.path), "exec")
            if not block.runs:
                continue
            with redirect_stdout(captured):
                exec(code, module.__dict__)
    finally:
        os.chdir(previous)
        sys.modules.pop(name, None)


def run_console(block: Block, exports: list[str]) -> None:
    """Run each command of a console block with bash; compare with the output shown."""
    env = dict(os.environ)
    # The commands are the ones this environment installed (melange, python).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MELANGE_BACKEND_URL", None)
    for command in commands(block.code):
        script = "\n".join([*exports, command.line])
        result = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        got = result.stdout + result.stderr
        shown = "\n".join(command.output).strip()
        where = f"{block.where}: $ {command.line.splitlines()[0]}"
        if shown:
            printed = "\n".join(line.rstrip() for line in got.strip("\n").splitlines()) + "\n"
            assert output_pattern(_trimmed(command.output)).fullmatch(printed), (
                f"{where}\n--- shown ---\n{shown}\n--- printed (exit {result.returncode}) ---\n"
                f"{got}"
            )
        else:
            assert result.returncode == 0, f"{where} failed (exit {result.returncode}):\n{got}"
        if command.line.startswith("export "):
            exports.append(command.line)


def _trimmed(lines: list[str]) -> list[str]:
    """The shown output without leading and trailing blank lines."""
    text = "\n".join(lines).strip("\n")
    return text.splitlines()


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def sqs_server() -> Iterator[tuple[str, int]]:
    """Host and port of an SQS/SNS server: ``MELANGE_SQS_ENDPOINT``, else a moto server."""
    configured = os.environ.get("MELANGE_SQS_ENDPOINT")
    if configured:
        parsed = urllib.parse.urlsplit(configured)
        yield f"{parsed.scheme}://{parsed.hostname}", parsed.port or 80
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _unavailable(f"SERVICE MISSING: the moto server did not start on {port}")
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def services(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes sure the services a page declares are up; tells the page where SQS is."""
    page: Page = request.param
    for service in page.services:
        if service in LOCAL_SERVICES:
            require_service(service)
        elif service == "sqs":
            host, port = request.getfixturevalue("sqs_server")
            monkeypatch.setenv("SQS_HOST", host)
            monkeypatch.setenv("SQS_PORT", str(port))
        else:
            pytest.fail(f"{page.path}: unknown service {service!r} in a requires marker")


RUNNABLE = [p for p in PAGES if any(b.is_python or b.is_console for b in p.blocks)]


@pytest.mark.parametrize("services", RUNNABLE, ids=[p.path for p in RUNNABLE], indirect=True)
def test_page_examples_run(services: None, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    page: Page = request.node.callspec.params["services"]
    run_page(page, tmp_path)


def test_every_code_block_is_run_or_says_why_not() -> None:
    problems: list[str] = []
    for page in PAGES:
        for block in page.blocks:
            if block.marker == "not-run" and not block.marker_arg:
                problems.append(f"{block.where}: not-run marker without a reason")
            if block.marker == "output" and block.is_python:
                problems.append(f"{block.where}: an output block must not be Python")
            if block.marker == "requires" and not block.is_python:
                problems.append(f"{block.where}: requires marker on a non-Python block")
            if not block.runs and not block.is_python and block.marker not in ("not-run", "output"):
                problems.append(
                    f"{block.where}: ```{block.lang or '(no language)'} block is neither run "
                    "nor marked <!-- not-run: reason -->"
                )
    assert not problems, "\n".join(problems)


def test_python_examples_are_formatted_and_use_what_they_import(tmp_path: Path) -> None:
    # Each page's runnable blocks together, in order, as they run; every Python block alone
    # for formatting. Redefinitions are allowed: later blocks re-import to stand alone.
    for page in PAGES:
        stem = re.sub(r"\W", "_", page.path.removesuffix(".md"))
        code = "\n".join(block.code for block in page.blocks if block.is_python and block.runs)
        if code:
            (tmp_path / "pages").mkdir(exist_ok=True)
            (tmp_path / "pages" / f"{stem}.py").write_text(code)
        for block in page.blocks:
            if block.is_python:
                (tmp_path / "blocks").mkdir(exist_ok=True)
                (tmp_path / "blocks" / f"{stem}_{block.line}.py").write_text(block.code)
    ruff = [sys.executable, "-m", "ruff"]
    checks = [
        [
            *ruff,
            "check",
            "--no-cache",
            "--select",
            "F",
            "--ignore",
            "F811",
            str(tmp_path / "pages"),
        ],
        [
            *ruff,
            "format",
            "--no-cache",
            "--check",
            "--diff",
            "--line-length",
            "100",
            str(tmp_path / "blocks"),
        ],
    ]
    for command in checks:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_documentation_has_examples_to_run() -> None:
    # Guards the extraction itself: a parser that found nothing would let every page pass.
    runnable = sum(1 for page in PAGES for block in page.blocks if block.runs)
    assert len(PAGES) >= 20
    assert runnable >= 40


def test_a_failing_example_fails_its_page() -> None:
    page = parse("Text.\n\n```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n", "fake.md")
    with pytest.raises(AssertionError):
        run_page(page)


def test_output_blocks_are_compared_with_what_the_examples_print() -> None:
    text = "```python\nprint('hello')\n```\n\n<!-- output -->\n```text\nhullo\n```\n"
    with pytest.raises(AssertionError, match="output shown differs"):
        run_page(parse(text, "fake.md"))
    run_page(parse(text.replace("hullo", "hello"), "fake.md"))


def test_markers_apply_to_the_next_block_only() -> None:
    text = (
        "<!-- not-run: needs AWS credentials -->\n\n```python\nboom()\n```\n\n"
        "Prose resets a marker.\n<!-- requires: redis -->\nMore prose.\n\n"
        '=== "Tab"\n\n    ```python\n    x = 1\n    ```\n'
    )
    page = parse(text, "fake.md")
    first, second = page.blocks
    assert (first.marker, first.marker_arg, first.runs) == (
        "not-run",
        "needs AWS credentials",
        False,
    )
    assert (second.marker, second.runs, second.code) == (None, True, "x = 1\n")
    assert page.services == []


def test_console_blocks_split_into_commands_and_their_output() -> None:
    code = "$ echo one\none\n$ cat > f.toml <<'EOF'\na = 1\nEOF\n$ cat f.toml\na = 1\n"
    found = commands(code)
    assert [c.line for c in found] == ["echo one", "cat > f.toml <<'EOF'\na = 1\nEOF", "cat f.toml"]
    assert [c.output for c in found] == [["one"], [], ["a = 1"]]


def test_ellipses_in_console_output_match_any_text() -> None:
    pattern = output_pattern(["published message ... to queue orders", "...", "done"])
    assert pattern.fullmatch("published message 3f2a to queue orders\nx\ny\ndone\n")
    assert pattern.fullmatch("published message 3f2a to queue orders\ndone\n")
    assert not pattern.fullmatch("published message 3f2a to queue refunds\ndone\n")


def test_a_console_command_printing_something_else_fails_its_page(tmp_path: Path) -> None:
    page = parse("```console\n$ echo hello\nhullo\n```\n", "fake.md")
    with pytest.raises(AssertionError, match="hullo"):
        run_page(page, tmp_path)
    failing = parse("```console\n$ false\n```\n", "fake.md")
    with pytest.raises(AssertionError, match="exit 1"):
        run_page(failing, tmp_path)


def test_two_markers_before_one_block_are_reported() -> None:
    with pytest.raises(ValueError, match="two markers"):
        parse("<!-- requires: redis -->\n<!-- output -->\n```text\nx\n```\n", "fake.md")


def test_an_unclosed_code_block_is_reported() -> None:
    with pytest.raises(ValueError, match="never closed"):
        parse("```python\nx = 1\n", "fake.md")


def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The hook generated the capability tables from the backends' descriptors.
    memory = (site / "backends" / "memory" / "index.html").read_text(encoding="utf-8")
    assert "native_dead_letter" in memory
    assert "<!-- capabilities" not in memory
    # Roles in docstrings became links to the objects they name.
    reference = (site / "reference" / "backends" / "index.html").read_text(encoding="utf-8")
    assert ":class:`" not in reference
    # Diagrams render offline: the page loads the site's own Mermaid, so the theme fetches none.
    architecture = (site / "architecture" / "index.html").read_text(encoding="utf-8")
    assert 'class="mermaid"' in architecture
    assert 'src="../javascripts/mermaid/mermaid.min.js"' in architecture
    assert (site / "javascripts" / "mermaid" / "mermaid.min.js").stat().st_size > 1_000_000
    assert 'href="../exceptions/#melange.exceptions.QueueNotFoundError"' in reference
