"""``melange queues`` and ``melange dlq`` on the embedded backend (RabbitMQ: see
test_queues_on_rabbitmq.py; SQS: tests/sqs/test_cli_inspection.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import assert_one_line_error, run_melange, sqlite_url
from click.testing import CliRunner

from inspection_suite import Inspected, InspectionSuite, seed
from melange import Consumer, MessageDispatcher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqlite import SQLiteBackend
from melange.cli import cli
from melange.models import FAILURE_QUEUE, FAILURE_REASON, Message
from melange.serializers.json import JsonSerializer


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A broker where two payments failed for good and one order waits."""
    path = tmp_path / "broker.db"
    backend = SQLiteBackend(path)
    seed(backend)
    backend.close_connection()
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_queues_list_shows_every_queue_and_topic_with_its_count(db: Path) -> None:
    code, out = invoke("queues", "list", "--backend-url", sqlite_url(db))

    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}
    assert rows["payments"] == "0"
    assert rows["payments-dlq"] == "2"
    assert rows["orders"] == "1"
    assert "topics: events" in out


def test_queue_stats_break_counts_down_by_state(db: Path) -> None:
    backend = SQLiteBackend(db)
    backend.retrieve_messages(backend.get_queue("payments-dlq"), max_messages=1)  # one in flight

    code, out = invoke("queues", "stats", "payments-dlq", "orders", "--backend-url", sqlite_url(db))

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["queue", "ready", "in", "flight", "delayed", "total"]
    assert lines[2].split() == ["payments-dlq", "1", "1", "0", "2"]
    assert lines[3].split() == ["orders", "1", "0", "0", "1"]


def test_purge_asks_first_and_deletes_every_message(db: Path) -> None:
    url = sqlite_url(db)
    refused = CliRunner().invoke(
        cli, ["queues", "purge", "orders", "--backend-url", url], input="n\n"
    )
    assert refused.exit_code == 1
    assert SQLiteBackend(db).queue_depth("orders") == 1

    code, out = invoke("queues", "purge", "orders", "--yes", "--backend-url", url)

    assert code == 0
    assert "1 message(s) deleted" in out
    assert SQLiteBackend(db).queue_depth("orders") == 0


def test_dlq_show_lists_each_message_with_why_it_failed(db: Path) -> None:
    code, out = invoke("dlq", "show", "payments-dlq", "--body", "--backend-url", sqlite_url(db))

    assert code == 0
    assert "card 4000-0000 declined" in out  # the reasons
    assert "card 4000-0001 declined" in out
    assert '{"order":1,"card":"4000-0000"}' in out  # the bodies
    assert "CardDeclined" in out
    assert "payments" in out
    assert "2 of 2 message(s) shown" in out
    assert "failing consumer(s): billing.charge" in out


def test_dlq_show_of_an_empty_queue_says_so(db: Path) -> None:
    code, out = invoke("dlq", "show", "payments", "--backend-url", sqlite_url(db))
    assert code == 0
    assert "payments is empty" in out


def test_redrive_moves_dead_letters_back_without_their_failure_headers(db: Path) -> None:
    result = run_melange("dlq", "redrive", "payments-dlq", "--backend-url", sqlite_url(db))

    assert result.returncode == 0, result.stderr
    assert "moved 2 message(s) out of payments-dlq" in result.stdout
    backend = SQLiteBackend(db)
    assert backend.queue_depth("payments-dlq") == 0
    back = backend.peek("payments")
    assert [m.content for m in back] == [
        '{"order": 1, "card": "4000-0000"}',
        '{"order": 2, "card": "4000-0001"}',
    ]
    assert not any(k.startswith("melange_failure_") for m in back for k in m.headers)

    # Once the bug is fixed, the redriven payments go through.
    charged: list[object] = []
    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(charged.append)]
    )
    dispatcher.consume_event("payments")
    assert len(charged) == 2


def test_redrive_limit_and_explicit_destination(db: Path) -> None:
    code, out = invoke(
        "dlq",
        "redrive",
        "payments-dlq",
        "--to",
        "orders",
        "--limit",
        "1",
        "--backend-url",
        sqlite_url(db),
    )

    assert code == 0, out
    backend = SQLiteBackend(db)
    assert backend.queue_depth("payments-dlq") == 1
    assert backend.queue_depth("orders") == 2


def test_dead_letter_without_a_source_queue_stays_put_and_is_reported(db: Path) -> None:
    backend = SQLiteBackend(db)
    MessagingBackendFactory(backend).init_queue("orphans")
    stray = Message.create('{"order": 9}', "json", 1, {FAILURE_REASON: "imported by hand"})
    backend.publish_to_queue(stray, backend.get_queue("orphans"))

    result = run_melange("dlq", "redrive", "orphans", "--backend-url", sqlite_url(db))

    assert_one_line_error(result, "1 message(s) do not say which queue", "--to QUEUE")
    assert backend.queue_depth("orphans") == 1
    [kept] = backend.peek("orphans")
    assert FAILURE_QUEUE not in kept.headers
    assert kept.headers[FAILURE_REASON] == "imported by hand"


def _duplicate_a_dead_letter(db: Path) -> str:
    """Put a second copy of the oldest dead letter right after it, as a consumer stopped
    between dead-lettering it and acknowledging it leaves; returns its message id."""
    backend = SQLiteBackend(db)
    first, second = backend.peek("payments-dlq")
    backend.purge("payments-dlq")
    dlq = backend.get_queue("payments-dlq")
    for message in (first, first, second):
        backend.publish_to_queue(message, dlq)
    assert [m.message_id for m in backend.peek("payments-dlq")] == [
        first.message_id,
        first.message_id,
        second.message_id,
    ]
    backend.close_connection()
    return first.message_id


def test_dlq_show_collapses_copies_with_the_same_message_id(db: Path) -> None:
    duplicated = _duplicate_a_dead_letter(db)

    code, out = invoke("dlq", "show", "payments-dlq", "--backend-url", sqlite_url(db))

    assert code == 0, out
    assert out.count(duplicated[:12]) == 1
    assert out.count("card 4000-0000 declined") == 1
    assert "card 4000-0001 declined" in out
    rows = out.splitlines()[2:4]
    assert [row.split()[-1] for row in rows] == ["2", "1"]  # the copies column
    assert "2 message(s) shown, from 3 of 3 stored copies" in out
    assert "1 duplicate copy(ies) with the same message id collapsed" in out


def test_dlq_show_limit_counts_distinct_messages(db: Path) -> None:
    _duplicate_a_dead_letter(db)

    code, out = invoke("dlq", "show", "payments-dlq", "-n", "2", "--backend-url", sqlite_url(db))

    assert code == 0, out
    assert "card 4000-0000 declined" in out
    assert "card 4000-0001 declined" in out  # not crowded out by the duplicate copy


def test_redrive_moves_a_duplicated_dead_letter_once(db: Path) -> None:
    _duplicate_a_dead_letter(db)

    code, out = invoke("dlq", "redrive", "payments-dlq", "--backend-url", sqlite_url(db))

    assert code == 0, out
    assert "moved 2 message(s) out of payments-dlq" in out
    assert "deleted 1 duplicate copy(ies)" in out
    backend = SQLiteBackend(db)
    assert backend.queue_depth("payments-dlq") == 0
    back = backend.peek("payments", limit=10)
    assert len(back) == 2
    assert len({m.message_id for m in back}) == 2
    assert [m.content for m in back] == [
        '{"order": 1, "card": "4000-0000"}',
        '{"order": 2, "card": "4000-0001"}',
    ]


def test_redrive_to_a_missing_queue_loses_nothing(db: Path) -> None:
    result = run_melange(
        "dlq", "redrive", "payments-dlq", "--to", "paymnets", "--backend-url", sqlite_url(db)
    )

    assert_one_line_error(result, "queue 'paymnets' does not exist")
    stats = SQLiteBackend(db).queue_stats("payments-dlq")
    assert (stats.ready, stats.in_flight) == (2, 0)  # given back at once, not left in flight


def test_redrive_into_the_dead_letter_queue_itself_is_refused(db: Path) -> None:
    code, out = invoke(
        "dlq", "redrive", "payments-dlq", "--to", "payments-dlq", "--backend-url", sqlite_url(db)
    )
    assert code == 1
    assert "itself" in out


class TestInspectionOnSQLite(InspectionSuite):
    @pytest.fixture
    def inspected(self, tmp_path: Path) -> Inspected:
        path = tmp_path / "inspected.db"
        return Inspected(sqlite_url(path), lambda: SQLiteBackend(path))
