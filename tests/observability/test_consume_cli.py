"""``melange consume`` with --metrics-port, --health-port and --log-format json, run as a
process on a SQLite broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from melange.backends.sqlite import SQLiteBackend
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_consume_serves_metrics_and_probes_and_logs_json(tmp_path: Path) -> None:
    database = tmp_path / "broker.sqlite3"
    backend = SQLiteBackend(database)
    backend.declare_queue("numbers", dead_letter_queue_name="numbers-dlq")
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(HERE)}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "melange.cli", "consume", "cli_target:consumer",
            "--queue", "numbers", "--backend-url", f"sqlite:///{database}",
            "--metrics-port", str(port), "--health-port", str(port),
            "--log-format", "json", "--log-level", "INFO",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while get(port, "/readyz")[0] != 200:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the consumer never got ready"
            time.sleep(0.1)
        assert get(port, "/livez")[0] == 200
        publisher = QueuePublisher(JsonSerializer(), backend)
        for n in range(1, 11):
            publisher.publish("numbers", {"n": n})
        dead = 'melange_messages_dead_lettered_total{queue="numbers"}'
        while True:
            status, metrics = get(port, "/metrics")
            assert status == 200
            if sample(metrics, dead) == 5:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        assert sample(metrics, 'melange_messages_received_total{queue="numbers"}') == 15
        # The queue's depth, read from the broker at the scrape: every message settled.
        assert 'melange_queue_messages{queue="numbers",state="total"} 0.0' in metrics
        assert (
            sample(
                metrics,
                'melange_messages_processed_total{consumer="odd-refuser",outcome="succeeded",'
                'queue="numbers"}',
            )
            == 5
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        backend.close_connection()
    assert process.returncode == 0, errors
    records = [json.loads(line) for line in errors.splitlines()]  # every line is JSON
    decisions: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("outcome") in ("retry", "dead_lettered"):
            decisions.setdefault(record["message_id"], []).append(record)
            assert record["queue"] == "numbers"
            assert record["consumer"] == "odd-refuser"
            assert "ValueError: odd number" in record["exception"]
    # One line per retry decision, one per dead letter: nothing else about the failures.
    assert len(decisions) == 5
    for lines in decisions.values():
        assert [(r["outcome"], r["attempt"]) for r in lines] == [
            ("retry", 1),
            ("dead_lettered", 2),
        ]
    assert not [r for r in records if "failed on message" in r["message"]]
    assert any(r["message"].startswith("consuming numbers") for r in records)
