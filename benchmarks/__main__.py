"""``python -m benchmarks [--quick] [--only SUITE ...] [--out DIR]``: run and write the results."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import legacy_env, report, services, suites
from benchmarks.runner import ROOT, SuiteResult, run_suite

SUITE_NAMES = [
    "rabbitmq",
    "sqs",
    "memory",
    "sqlite",
    "redis-streams",
    "nats",
    "kafka",
    "kombu-redis",
    "kombu-amqp",
]


def main(argv: list[str] | None = None) -> int:
    """Run the suites, print the targets, write the results; exit 1 when a suite failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller rounds (< 2 min)")
    parser.add_argument("--only", nargs="+", choices=SUITE_NAMES, help="run only these suites")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--measure",
        nargs="+",
        metavar="MEASUREMENT",
        help="run only these measurements of each suite (publish, consume, e2e, ...)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where results go"
    )
    parser.add_argument(
        "--no-legacy", action="store_true", help="skip melange 7.2.0 (no virtualenv build)"
    )
    args = parser.parse_args(argv)
    sizes = suites.QUICK if args.quick else suites.FULL
    rounds = args.rounds or sizes.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = args.only or SUITE_NAMES
    started = time.monotonic()
    results: list[tuple[suites.Suite, SuiteResult]] = []
    with tempfile.TemporaryDirectory(prefix="melange-bench-") as scratch:
        work = Path(scratch)
        logs = work / "logs"
        logs.mkdir()
        before = services.machine()
        print(f"machine: {before}")
        for name in wanted:
            print(f"{name}:")
            if name == "sqs":
                results.append(
                    _run_sqs(sizes, rounds, logs, legacy=not args.no_legacy, measure=args.measure)
                )
                continue
            if name == "rabbitmq":
                suite = suites.rabbit_suite(sizes)
            elif name == "memory":
                suite = suites.memory_suite(sizes)
            elif name == "nats":
                suite = suites.nats_suite(sizes)
            elif name == "redis-streams":
                suite = suites.redis_streams_suite(sizes)
            elif name == "kafka":
                suite = suites.kafka_suite(sizes)
            elif name.startswith("kombu-"):
                suite = suites.kombu_suite(name, sizes)
            else:
                suite = suites.sqlite_suite(sizes, str(work / "sqlite"))
            _select(suite, args.measure)
            results.append((suite, run_suite(name, suite.specs, suite.measurements, rounds, logs)))
        mode = "quick" if args.quick else "full"
        machine = services.machine()
        machine["load_average_before"] = before["load_average"]
        doc = report.build(results, machine, mode, time.monotonic() - started)
        report.write(doc, args.out)
    print()
    for verdict in doc["targets"]:
        if verdict.get("met") is None:
            print(f"  ?    {verdict['target']}: {verdict['why']}")
        else:
            mark = "MET " if verdict["met"] else "MISS"
            print(
                f"  {mark} {verdict['target']}: median {verdict['median']:.2f} "
                f"(min {verdict['min']:.2f}, max {verdict['max']:.2f})"
            )
    print(f"\nwrote {args.out}/results.md, results.json, chart.png in {doc['duration_s']:.0f}s")
    failed = any(result.errors for _, result in results)
    return 1 if failed else 0


def _select(suite: suites.Suite, measure: list[str] | None) -> None:
    """Keep only the measurements named in ``measure`` (all when ``None``)."""
    if measure:
        suite.measurements = [m for m in suite.measurements if m.key in measure]


def _run_sqs(
    sizes: suites.Sizes, rounds: int, logs: Path, legacy: bool, measure: list[str] | None
) -> tuple[suites.Suite, SuiteResult]:
    legacy_python: str | None = None
    if legacy:
        try:
            legacy_python = str(legacy_env.ensure(logs / "legacy-env.log"))
        except Exception as exc:  # reported; the other contenders still run
            print(f"  melange 7.2.0 environment could not be built: {exc}")
    with services.MotoServer(logs / "moto.log") as moto:
        suite = suites.sqs_suite(sizes, moto.port, legacy_python)
        _select(suite, measure)
        return suite, run_suite("sqs", suite.specs, suite.measurements, rounds, logs)


if __name__ == "__main__":
    sys.exit(main())
