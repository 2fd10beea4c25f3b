"""Smoke test of the benchmark harness: it imports, runs a round and reports honestly.

No benchmark runs here: one tiny in-memory round proves the worker protocol, the timing
records and the report wiring; the rest checks the arithmetic the verdicts rest on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.runner import (  # noqa: E402
    ContenderSpec,
    Measurement,
    SuiteResult,
    Worker,
    round_order,
    run_suite,
)
from benchmarks.workload import IntegrityError, Tally, make_payload, percentile  # noqa: E402

from benchmarks import report, suites  # noqa: E402


def test_one_in_memory_round_produces_records_and_a_report(tmp_path: Path) -> None:
    spec = ContenderSpec(
        "melange", "benchmarks.contenders.memory:MelangeMemory", "Melange in-memory", melange=True
    )
    broken = ContenderSpec("broken", "benchmarks.contenders.memory:NoSuchContender", "broken")
    measurements = [
        Measurement("e2e", "end to end", {"melange": ("e2e", {"n": 200})}),
        Measurement("e2e_4n", "end to end at 4N", {"melange": ("e2e", {"n": 800})}),
    ]
    result = run_suite("memory", [spec, broken], measurements, 1, tmp_path, progress=lambda _: None)

    assert result.errors == []
    assert "NoSuchContender" in result.contenders["broken"]["unavailable"]
    (record,) = result.rounds["e2e"]["melange"]
    assert record["n"] == 200
    assert record["seconds"] > 0
    assert record["cpu_s"] >= 0
    assert record["peak_rss_kb"] > 0
    assert result.contenders["melange"]["peak_rss_kb"] > 0

    suite = suites.Suite("memory", "In-memory", [spec, broken], measurements)
    doc = report.build([(suite, result)], {"cores": "2"}, "quick", 1.0)
    json.dumps(doc)  # the results document is plain JSON
    summary = doc["suites"]["memory"]
    assert summary["linearity_4n_over_n"]["rounds"] == 1
    verdicts = {v["target"]: v for v in doc["targets"]}
    absolute = verdicts["in-memory end to end >= 50,000 msg/s"]
    assert absolute["median"] == pytest.approx(200 / record["seconds"])
    # The peer was unavailable: its target is reported as not measured, never as met.
    assert verdicts["in-memory end to end >= 20x FastStream's TestRabbitBroker"]["met"] is None


def test_ratios_are_medians_of_per_round_ratios() -> None:
    spec_a = ContenderSpec("melange", "x:A", "Melange", melange=True)
    spec_b = ContenderSpec("peer", "x:B", "peer")
    suite = suites.Suite(
        "sqlite", "SQLite", [spec_a, spec_b], [Measurement("e2e", "end to end", {})]
    )
    result = SuiteResult("sqlite")
    # Melange is 2x, 4x and 1x the peer in rounds 1-3: the median ratio is 2x, whatever the
    # ratio of the median throughputs would be.
    result.rounds["e2e"] = {
        "melange": [
            {"round": r, "n": 100, "seconds": s, "cpu_s": 0.1} for r, s in [(1, 1), (2, 1), (3, 4)]
        ],
        "peer": [
            {"round": r, "n": 100, "seconds": s, "cpu_s": 0.1} for r, s in [(1, 2), (2, 4), (3, 4)]
        ],
    }
    ratios = report.summarize(suite, result)["measurements"]["e2e"]["ratios"]["peer"]
    assert ratios == {"median": 2.0, "min": 1.0, "max": 4.0, "rounds": 3}


def test_tally_refuses_lost_duplicated_or_foreign_messages() -> None:
    tally = Tally(first_id=1000, n=3, record_latency=False)
    for message_id in (1000, 1001, 1001):
        tally(make_payload(message_id))
    assert not tally.complete
    with pytest.raises(IntegrityError, match="expected 3 distinct messages, got 2"):
        tally.check("e2e")
    tally(make_payload(7))
    tally(make_payload(1002))
    assert tally.complete
    with pytest.raises(IntegrityError, match="1 from elsewhere"):
        tally.check("e2e")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_asyncio_rows_follow_the_threaded_one_in_every_suite() -> None:
    sizes = suites.QUICK
    for suite in [
        suites.rabbit_suite(sizes),
        suites.sqs_suite(sizes, 1, "python-7.2"),
        suites.memory_suite(sizes),
        suites.sqlite_suite(sizes, "/tmp/unused"),
    ]:
        keys = [spec.key for spec in suite.specs]
        assert keys[0] == "melange"
        assert keys[1] == suites.ASYNCIO_KEY
        assert keys[-1] == suites.LINEARITY_KEY
        e2e = next(m for m in suite.measurements if m.key == "e2e")
        assert suites.ASYNCIO_KEY in e2e.ops
    rabbit = suites.rabbit_suite(sizes)
    assert [spec.params.get("driver") for spec in rabbit.specs[:3]] == [
        None,
        "asyncio",
        "asyncio-adapted",
    ]


def test_a_cost_target_is_met_at_or_below_its_threshold() -> None:
    target = suites.Target(
        "sqs",
        "consume",
        0.2,
        numerator=suites.ASYNCIO_KEY,
        metric="requests_per_message",
        at_most=True,
        text="consume <= 0.2 requests per message",
    )
    per_message = {"median": 0.2, "min": 0.19, "max": 0.21, "rounds": 3}
    summaries = {
        "sqs": {
            "melange": "melange",
            "measurements": {
                "consume": {
                    "contenders": {
                        suites.ASYNCIO_KEY: {"requests_per_message": per_message},
                        "melange": {"requests_per_message": {**per_message, "median": 0.5}},
                    }
                }
            },
        }
    }
    verdict = report.evaluate(target, summaries)
    assert verdict["met"] is True
    assert verdict["every_round"] is False
    assert verdict["unit"] == " requests/msg"


def test_scale_probe_measures_a_shallow_queue_over_a_whole_slice(tmp_path: Path) -> None:
    from benchmarks import scale

    row = scale.measure_depth("memory", 1_000, str(tmp_path))
    assert row["depth"] == 1_000 and row["first_rate"] > 0
    assert row["lease_entries_after_drain"] <= 32
    measured = scale.measure_receivers("memory", str(tmp_path), settings=(0, 2), slices=2)
    quiet, busy = measured["publish"]
    assert (quiet["idle_receivers"], busy["idle_receivers"]) == (0, 2)
    assert quiet["ratio"] == 1.0 and busy["publish_rate"] > 0 and busy["ratio"] > 0


def test_scale_targets_judge_the_worst_ratio_and_the_payload_free_overhead() -> None:
    from benchmarks import scale

    def depth_row(depth: int, first: float, last: float, rss: float) -> dict[str, float]:
        return {
            "depth": depth,
            "first_ratio": first,
            "last_ratio": last,
            "rss_per_message": rss,
            "drained_vs_empty": 1.1,
            "count_ms": 0.1,
        }

    results = {
        "memory": {
            "depths": [depth_row(1_000, 1.0, 1.0, 700), depth_row(1_000_000, 0.9, 0.79, 382)],
            "publish": [{"idle_receivers": 0, "ratio": 1.0}, {"idle_receivers": 50, "ratio": 0.8}],
        }
    }
    verdicts = {what.split(" (")[0]: (figure, met) for what, figure, met in scale.targets(results)}
    assert verdicts["memory: consume rate at every depth >= 0.8x the 1k rate"] == ("0.79x", False)
    overhead = (
        f"memory: memory per queued message beyond its {scale.PAYLOAD_BYTES}-byte payload < 300 B"
    )
    assert verdicts[overhead] == (f"{382 - scale.PAYLOAD_BYTES} B", False)
    published = "memory: publish rate with 50 idle receivers on other queues >= 0.8x with none"
    assert verdicts[published] == ("0.80x", True)


def test_a_contender_prepares_before_each_operation_outside_the_timed_section(
    tmp_path: Path,
) -> None:
    # The Kafka contenders start every end to end on a new broker this way: the setting up
    # must not count in the figures, and must happen before every operation but a reset.
    from tests.benchmarks.prepared_contender import PREPARATION_SECONDS

    spec = ContenderSpec(
        "prepared", "tests.benchmarks.prepared_contender:PreparedMemory", "prepared", melange=True
    )
    worker = Worker(spec, tmp_path)
    try:
        first = worker.run("e2e", n=50)
        worker.run("reset")
        second = worker.run("publish", n=20)
        prepared = worker.run("prepared")["ops"]
    finally:
        worker.close()
    assert prepared == ["e2e", "publish", "prepared"]
    for record in (first, second):
        assert record["seconds"] < PREPARATION_SECONDS


def test_even_rounds_run_the_contenders_in_the_reverse_order() -> None:
    ops = {key: ("e2e", {"n": 10}) for key in ("melange", "asyncio", "peer")}
    assert [key for key, _ in round_order(ops, 1)] == ["melange", "asyncio", "peer"]
    assert [key for key, _ in round_order(ops, 2)] == ["peer", "asyncio", "melange"]
    assert [key for key, _ in round_order(ops, 3)] == ["melange", "asyncio", "peer"]
    assert dict(round_order(ops, 2)) == ops
