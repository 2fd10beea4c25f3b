"""``melange publish``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, run_melange, sqlite_url
from click.testing import CliRunner

from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqlite import SQLiteBackend
from melange.cli import cli


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "broker.db"
    backend = SQLiteBackend(path)
    factory = MessagingBackendFactory(backend)
    factory.init_queue("orders")
    factory.init_queue("audit", "events")
    factory.init_queue("billing", "events")
    backend.close_connection()
    return path


def test_published_json_lands_in_the_queue_with_its_headers(db: Path) -> None:
    result = run_melange(
        "publish",
        "orders",
        "--json",
        '{"order_id": 42, "items": ["book"]}',
        "-H",
        "tenant=acme",
        "--backend-url",
        sqlite_url(db),
    )

    assert result.returncode == 0, result.stderr
    [message] = SQLiteBackend(db).peek("orders")
    assert json.loads(message.content) == {"order_id": 42, "items": ["book"]}
    assert message.manifest == "json"
    assert message.serializer_id == 1
    assert message.headers["tenant"] == "acme"
    assert f"published message {message.message_id} to queue orders" in result.stdout


def test_publishing_to_a_topic_reaches_every_subscribed_queue(db: Path) -> None:
    result = CliRunner().invoke(
        cli, ["publish", "events", "--topic", "--json", "[1, 2]", "--backend-url", sqlite_url(db)]
    )

    assert result.exit_code == 0, result.output
    backend = SQLiteBackend(db)
    assert [m.content for m in backend.peek("audit")] == ["[1, 2]"]
    assert [m.content for m in backend.peek("billing")] == ["[1, 2]"]
    assert backend.peek("orders") == []


def test_invalid_json_names_the_parse_error_and_its_position(db: Path) -> None:
    text = '{"order_id": 42,}'
    # Where the parser places the error moved between Python versions (3.13 points at the
    # comma): the message gives the parser's own position.
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(text)
    result = run_melange("publish", "orders", "--json", text, "--backend-url", sqlite_url(db))

    assert_one_line_error(
        result, "not valid JSON", f"line {parsed.value.lineno}, column {parsed.value.colno}"
    )
    assert SQLiteBackend(db).peek("orders") == []


def test_missing_queue_is_named_in_the_error(db: Path) -> None:
    result = run_melange("publish", "ordres", "--json", "{}", "--backend-url", sqlite_url(db))
    assert_one_line_error(result, "queue 'ordres' does not exist")


def test_header_without_a_value_is_refused(db: Path) -> None:
    result = CliRunner().invoke(
        cli, ["publish", "orders", "--json", "{}", "-H", "tenant", "--backend-url", sqlite_url(db)]
    )
    assert result.exit_code == 1
    assert "NAME=VALUE" in result.output
