"""``melange init``: a topology from a TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import assert_one_line_error, run_melange, sqlite_url

from melange.backends.sqlite import SQLiteBackend
from melange.models import Message

TOPOLOGY = """
topics = ["audit"]

[queues.payment-service]
topics = ["orders"]
filter_events = ["OrderCreated"]
dead_letter_queue = "payment-service-dlq"
max_receive_count = 2
visibility_timeout = 5

[queues.ledger]
topics = ["orders", "payments"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


def test_declares_topics_queues_filters_and_dead_letter_queues(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"

    result = run_melange("init", str(write(tmp_path, TOPOLOGY)), "--backend-url", sqlite_url(db))

    assert result.returncode == 0, result.stderr
    assert "declared 3 item(s)" in result.stdout
    backend = SQLiteBackend(db)
    assert backend.topic_names() == ["audit", "orders", "payments"]
    assert backend.queue_names() == ["ledger", "payment-service", "payment-service-dlq"]
    assert backend.subscriptions("orders") == {
        "ledger": None,
        "payment-service": ["OrderCreated"],
    }
    assert backend.subscriptions("payments") == {"ledger": None}


def test_declared_dead_letter_queue_and_receive_count_are_in_force(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    run_melange("init", str(write(tmp_path, TOPOLOGY)), "--backend-url", sqlite_url(db))
    backend = SQLiteBackend(db)
    queue = backend.get_queue("payment-service")
    backend.publish_to_queue(Message.create("{}", "OrderCreated", 1), queue)

    for _ in range(2):  # max_receive_count = 2 deliveries, never settled
        [message] = backend.retrieve_messages(queue)
        backend.nack(message)

    assert backend.retrieve_messages(queue) == []
    assert backend.queue_depth("payment-service-dlq") == 1


def test_running_init_again_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    path = write(tmp_path, TOPOLOGY)
    run_melange("init", str(path), "--backend-url", sqlite_url(db))
    backend = SQLiteBackend(db)
    backend.publish_to_queue(Message.create("{}", "json", 1), backend.get_queue("ledger"))

    again = run_melange("init", str(path), "--backend-url", sqlite_url(db))

    assert again.returncode == 0, again.stderr
    assert backend.queue_depth("ledger") == 1


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('topics = ["a"]\nqueues = = 1', ("not valid TOML", "line 2, column 10")),
        ('topicz = ["a"]', ("unknown top-level key(s) ['topicz']",)),
        ("[queues.q]\ntopic = ['a']", ("queues.q: unknown key(s) ['topic']",)),
        (
            "[queues.q]\nmax_receive_count = 'three'",
            ("queues.q.max_receive_count must be a whole number",),
        ),
        ("[queues.q]\ntopics = 'orders'", ("queues.q.topics must be a list of topic names",)),
        ("", ("declares nothing",)),
    ],
)
def test_mistakes_in_the_file_are_named(
    tmp_path: Path, text: str, fragments: tuple[str, ...]
) -> None:
    db = tmp_path / "broker.db"
    result = run_melange("init", str(write(tmp_path, text)), "--backend-url", sqlite_url(db))
    assert_one_line_error(result, *fragments)
    assert not db.exists() or SQLiteBackend(db).queue_names() == []


def test_missing_file_is_named(tmp_path: Path) -> None:
    result = run_melange("init", str(tmp_path / "nope.toml"), "--backend-url", "memory://")
    assert_one_line_error(result, "nope.toml", "does not exist")
