"""The ``melange`` command facing hostile input: what it prints from a message cannot drive
the terminal, numbers that are not finite are refused, no password or secret key appears in
its errors, and an unreachable broker is one line with its address and the reason."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, run_melange, sqlite_url

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqlite import SQLiteBackend
from melange.models import FAILURE_QUEUE, FAILURE_REASON, Message

SECRET = "s3cretpw"
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m"


def _dead_letter_queue_holding_escapes(db: Path) -> None:
    backend = SQLiteBackend(db)
    MessagingBackendFactory(backend).init_queue("work", dead_letter_queue_name="work-dlq")
    message = Message.create(
        f'{{"note": "{ESCAPES}"}}'.replace("\x1b", "\\u001b").replace("\x07", "\\u0007"),
        "json",
        1,
        {FAILURE_REASON: f"failed {ESCAPES}", FAILURE_QUEUE: "work", "x": "y"},
    )
    message.manifest = f"Order{ESCAPES}"
    backend.publish_to_queue(message, backend.get_queue("work-dlq"))
    raw = Message.create(f"raw body {ESCAPES}", "json", 1, {FAILURE_QUEUE: "work"})
    backend.publish_to_queue(raw, backend.get_queue("work-dlq"))
    backend.close_connection()


def test_dlq_show_escapes_control_characters_of_bodies_and_headers(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    _dead_letter_queue_holding_escapes(db)
    result = run_melange("dlq", "show", "work-dlq", "--body", "--backend-url", sqlite_url(db))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for char in ("\x1b", "\x07", "\x9b"):
        assert char not in out, repr(out)
    assert "\\x1b]0;owned\\x07" in out
    assert "2 of 2 message(s) shown" in out


def test_queue_listings_escape_control_characters_in_names_stored_earlier(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    SQLiteBackend(db).close_connection()
    import sqlite3

    # A name from a database written before names were checked.
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO queues (name, fifo, visibility_timeout, created_at) VALUES (?, 0, 30, 0)",
            (f"q{ESCAPES}",),
        )
        conn.execute("INSERT INTO topics (name, created_at) VALUES (?, 0)", (f"t{ESCAPES}",))
    result = run_melange("queues", "list", "--backend-url", sqlite_url(db))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "q\\x1b]0;owned" in result.stdout
    assert "t\\x1b]0;owned" in result.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0"])
def test_init_refuses_a_visibility_timeout_that_is_not_a_positive_finite_number(
    tmp_path: Path, value: str
) -> None:
    db = tmp_path / "m.db"
    path = tmp_path / "topology.toml"
    path.write_text(f"[queues.orders]\nvisibility_timeout = {value}\n", encoding="utf-8")
    result = run_melange("init", str(path), "--backend-url", sqlite_url(db))
    assert_one_line_error(result, "queues.orders.visibility_timeout")
    assert "declared" not in result.stdout
    listed = run_melange("queues", "list", "--backend-url", sqlite_url(db))
    assert "orders" not in listed.stdout


def test_init_refuses_a_max_receive_count_that_is_not_a_whole_number(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_text("[queues.orders]\nmax_receive_count = 0\n", encoding="utf-8")
    result = run_melange("init", str(path), "--backend-url", sqlite_url(tmp_path / "m.db"))
    assert_one_line_error(result, "max_receive_count")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_url_number_that_is_not_finite_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "topology.toml"
    path.write_text("[queues.orders]\n", encoding="utf-8")
    url = f"{sqlite_url(tmp_path / 'm.db')}?visibility_timeout={value}"
    result = run_melange("init", str(path), "--backend-url", url)
    assert_one_line_error(result, "visibility_timeout", "finite")


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://guest:{SECRET}@127.0.0.1:5672/%2F?bogus=1",
        f"amqp://guest:{SECRET}@127.0.0.1:notaport/%2F",
        f"sqs://AKID:{SECRET}@localhost:9324?bogus=1",
        f"sqs://?region=eu-west-1&aws_secret_access_key={SECRET}&bogus=1",
        f"memory://guest:{SECRET}@somewhere",
        f"sqlite://guest:{SECRET}@host/m.db",
        f"guest:{SECRET}@localhost",
    ],
)
def test_no_secret_of_the_backend_url_appears_in_an_error(tmp_path: Path, url: str) -> None:
    from_env = run_melange(
        "publish", "q", "--json", "{}", env={"MELANGE_BACKEND_URL": url}, cwd=tmp_path
    )
    assert from_env.returncode != 0
    assert SECRET not in from_env.stderr + from_env.stdout
    assert "MELANGE_BACKEND_URL" in from_env.stderr
    from_option = run_melange("queues", "list", "--backend-url", url, cwd=tmp_path)
    assert from_option.returncode != 0
    assert SECRET not in from_option.stderr + from_option.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_broker_is_one_line_with_its_address_and_the_reason() -> None:
    port = _free_port()  # nothing listens there
    url = f"amqp://guest:{SECRET}@127.0.0.1:{port}/%2F"
    result = run_melange("publish", "q", "--json", "{}", "--backend-url", url)
    assert_one_line_error(result, f"127.0.0.1:{port}", "Connection refused")
    assert SECRET not in result.stderr
