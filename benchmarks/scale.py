"""``python -m benchmarks.scale [--quick] [--rounds N] [--backends ...] [--out DIR]``: how
the embedded backends behave as queues grow.

Per backend (each measurement in a fresh worker process, so that memory figures are its own):

- consume rate of the first and the last 5,000 messages of a backlog of 1k, 100k and 1M
  messages (receive 10 at a time and acknowledge), as ratios to the rate at 1k (target >= 0.8);
- RSS per queued message, and the RSS after draining them against the process before
  publishing (target: within 20%);
- single-message publish rate with 0, 10 and 50 idle receivers waiting on other queues, as
  ratios to 0 (target >= 0.8 at 50), in slices that alternate between the settings within
  one process;
- the time to count a queue's messages (``queue_stats``, in memory ``queue_depth``) at 1M
  (target < 10 ms).

The SQLite backlog's middle is deleted in one statement rather than consumed (the last 5,000
are consumed as they would be after a drain); the in-memory one is consumed whole. In-memory
rates are per second of the worker's CPU time, SQLite ones per wall-clock second (see
``_clock``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SLICE = 5_000
#: Bytes of JSON per message (see _messages).
PAYLOAD_BYTES = 82
PUBLISH_N = 5_000
#: Slices of PUBLISH_N publishes timed in memory (median rate taken).
MEMORY_PUBLISH_SLICES = 9
#: The same in SQLite (a slice lasts about a third of a second).
SQLITE_PUBLISH_SLICES = 3
RECEIVERS = (0, 10, 50)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _backend(kind: str, directory: str) -> Any:
    if kind == "memory":
        from melange.backends.memory import InMemoryMessagingBackend

        return InMemoryMessagingBackend(visibility_timeout=30.0)
    from melange.backends.sqlite import SQLiteBackend

    return SQLiteBackend(os.path.join(directory, "scale.db"), visibility_timeout=30.0)


def _messages(start: int, count: int) -> list[Any]:
    from melange.models import Message

    # 82 bytes of JSON, with the published-at header a publisher adds.
    return [
        Message.create(f'{{"id": {i:012d}, "body": "{"x" * 50}"}}', "json", 1)
        for i in range(start, start + count)
    ]


def _fill(backend: Any, queue: Any, depth: int) -> None:
    for start in range(0, depth, 1000):
        backend.publish_batch_to_queue(_messages(start, min(1000, depth - start)), queue)


def _clock(kind: str) -> Any:
    """What a rate is timed with: in memory the worker's CPU time, elsewhere the wall clock.

    An in-memory slice of 5,000 messages lasts 15-30 ms, so on a shared machine the wall
    clock mostly measures the other load (single slices vary fourfold); every thread's CPU
    time of the worker (idle receivers' wake-ups included) measures what the backend does.
    A SQLite rate includes waiting for the file system, which only the wall clock sees.
    """
    return time.process_time if kind == "memory" else time.perf_counter


def _consume(backend: Any, queue: Any, count: int, clock: Any = time.perf_counter) -> float:
    """Receive and acknowledge ``count`` messages; their rate per second of ``clock``."""
    done = 0
    started = clock()
    while done < count:
        received = backend.retrieve_messages(queue, max_messages=min(10, count - done))
        if not received:
            break
        backend.acknowledge_batch(received)
        done += len(received)
    return done / max(clock() - started, 1e-9)


def _skip_to_last(kind: str, backend: Any, queue: Any, keep: int) -> None:
    if kind == "memory":
        while True:
            pending = backend.queue_depth(queue.name) - keep
            if pending <= 0:
                return
            received = backend.retrieve_messages(queue, max_messages=min(100, pending))
            backend.acknowledge_batch(received)
    with backend._db.write() as conn:
        conn.execute(
            "DELETE FROM messages WHERE queue = ? AND id NOT IN "
            "(SELECT id FROM messages WHERE queue = ? ORDER BY id DESC LIMIT ?)",
            (queue.name, queue.name, keep),
        )


def _count(kind: str, backend: Any, name: str) -> int:
    if kind == "memory":
        return int(backend.queue_depth(name))
    return int(backend.queue_stats(name).total)


def measure_depth(kind: str, depth: int, directory: str) -> dict[str, Any]:
    """Consume rates of the first and last slice at ``depth``; RSS; the count's time."""
    gc.collect()
    backend = _backend(kind, directory)
    queue, _ = backend.declare_queue("scale")
    empty = _rss()
    _fill(backend, queue, depth)
    gc.collect()
    full = _rss()
    started = time.perf_counter()
    counted = _count(kind, backend, queue.name)
    count_ms = (time.perf_counter() - started) * 1000
    assert counted == depth, (counted, depth)
    if depth >= SLICE:
        first = _consume(backend, queue, SLICE, _clock(kind))
    else:
        # A shallow queue is consumed, refilled and consumed again until a slice's worth was
        # timed: a single pass of 1,000 messages lasts a few milliseconds, too short to time.
        seconds, consumed = 0.0, 0
        while True:
            seconds += depth / _consume(backend, queue, depth, _clock(kind))
            consumed += depth
            if consumed >= SLICE:
                break
            _fill(backend, queue, depth)
        first = consumed / seconds
    last = first
    if depth > SLICE:
        _skip_to_last(kind, backend, queue, SLICE)
        last = _consume(backend, queue, SLICE, _clock(kind))
    # One more receive finds the queue empty, as a consumer's next poll would.
    assert not backend.retrieve_messages(queue, max_messages=10)
    gc.collect()
    drained = _rss()
    result = {
        "backend": kind,
        "depth": depth,
        "first_rate": first,
        "last_rate": last,
        "count_ms": count_ms,
        "rss_per_message": (full - empty) / depth,
        "rss_empty_mb": empty / 2**20,
        "rss_drained_mb": drained / 2**20,
    }
    if kind == "memory":
        state = backend._queues[queue.name]
        result["lease_entries_after_drain"] = len(state.leases)
    backend.close_connection()
    return result


def measure_receivers(
    kind: str,
    directory: str,
    settings: tuple[int, ...] = RECEIVERS,
    slices: int | None = None,
) -> dict[str, Any]:
    """Single-message publish rates with 0, 10 and 50 idle receivers waiting on other queues,
    in one process: slices alternate between the settings (receivers are started and stopped
    between them), so that the ratios compare slices of the same process moments apart; a
    process-to-process difference (memory layout, a burst of other load) would otherwise
    outweigh what idle receivers cost. ``settings``: the numbers of idle receivers, the first
    one the base of the ratios; ``slices``: slices per setting (by default 9 in memory, 3 in
    SQLite)."""
    backend = _backend(kind, directory)
    queue, _ = backend.declare_queue("published")
    receivers: list[tuple[threading.Thread, threading.Event]] = []

    def start_receiver(index: int) -> None:
        other, _ = backend.declare_queue(f"idle-{index}")
        stop = threading.Event()

        def wait() -> None:
            while not stop.is_set():
                backend.retrieve_messages(other, wait_seconds=1.0)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        receivers.append((thread, stop))

    def stop_receivers() -> None:
        for _, stop in receivers:
            stop.set()
        backend.interrupt()
        for thread, _ in receivers:
            thread.join(5)
        receivers.clear()

    rates: dict[int, list[float]] = {idle: [] for idle in settings}
    cpu_us: dict[int, list[float]] = {idle: [] for idle in settings}
    clock = _clock(kind)
    published = 0
    if slices is None:
        slices = MEMORY_PUBLISH_SLICES if kind == "memory" else SQLITE_PUBLISH_SLICES
    for _ in range(slices):
        for idle in settings:
            if len(receivers) > idle:
                stop_receivers()
            while len(receivers) < idle:
                start_receiver(len(receivers))
            time.sleep(0.2)  # the receivers are waiting
            messages = _messages(published, PUBLISH_N)
            published += PUBLISH_N
            cpu = time.process_time()  # every thread: the idle receivers' wake-ups count
            started = clock()
            for message in messages:
                backend.publish_to_queue(message, queue)
            rates[idle].append(PUBLISH_N / max(clock() - started, 1e-9))
            cpu_us[idle].append((time.process_time() - cpu) / PUBLISH_N * 1e6)
    stop_receivers()
    backend.close_connection()
    quiet = rates[settings[0]]
    return {
        "backend": kind,
        "publish": [
            {
                "idle_receivers": idle,
                "publish_rate": statistics.median(rates[idle]),
                "publish_cpu_us": statistics.median(cpu_us[idle]),
                # Each slice against the slice without receivers just before it.
                "ratio": statistics.median(
                    [r / q for r, q in zip(rates[idle], quiet, strict=True)]
                ),
            }
            for idle in settings
        ],
    }


def _worker(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="melange-scale-") as directory:
        if args.depth is not None:
            result = measure_depth(args.worker, args.depth, directory)
        else:
            result = measure_receivers(args.worker, directory)
    print(json.dumps(result))


def _run(kind: str, *options: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.scale", "--worker", kind, *options]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run(backends: list[str], depths: list[int], rounds: int = 3) -> dict[str, Any]:
    """Every measurement of every backend, each in a worker process of its own.

    Rounds interleave the settings (1k, 100k, 1M, 1k, 100k, 1M, ...; 0, 10, 50 receivers,
    0, 10, 50, ...), and every ratio is the median of the ratios within a round, so that a
    burst of other load on the machine moves both sides of a ratio.
    """
    results: dict[str, Any] = {}
    for kind in backends:
        by_depth: dict[int, list[dict[str, Any]]] = {depth: [] for depth in depths}
        by_idle: dict[int, list[dict[str, Any]]] = {idle: [] for idle in RECEIVERS}
        for _ in range(rounds):
            for depth in depths:
                by_depth[depth].append(_run(kind, "--depth", str(depth)))
            for row in _run(kind, "--receivers")["publish"]:
                by_idle[row["idle_receivers"]].append(row)
        base = by_depth[depths[0]]
        rows = []
        for depth in depths:
            runs = by_depth[depth]
            rows.append(
                {
                    "backend": kind,
                    "depth": depth,
                    "first_rate": _median([r["first_rate"] for r in runs]),
                    "last_rate": _median([r["last_rate"] for r in runs]),
                    "first_ratio": _median(
                        [r["first_rate"] / b["first_rate"] for r, b in zip(runs, base, strict=True)]
                    ),
                    "last_ratio": _median(
                        [r["last_rate"] / b["first_rate"] for r, b in zip(runs, base, strict=True)]
                    ),
                    "rss_per_message": _median([r["rss_per_message"] for r in runs]),
                    "drained_vs_empty": _median(
                        [r["rss_drained_mb"] / r["rss_empty_mb"] for r in runs]
                    ),
                    "count_ms": _median([r["count_ms"] for r in runs]),
                    "rounds": runs,
                }
            )
        publish = [
            {
                "backend": kind,
                "idle_receivers": idle,
                "publish_rate": _median([r["publish_rate"] for r in by_idle[idle]]),
                "publish_cpu_us": _median([r["publish_cpu_us"] for r in by_idle[idle]]),
                "ratio": _median([r["ratio"] for r in by_idle[idle]]),
            }
            for idle in RECEIVERS
        ]
        results[kind] = {"depths": rows, "publish": publish}
    return results


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each target of the scale benchmark: what, the measured figure, whether it is met."""
    out: list[tuple[str, str, bool]] = []
    for kind, result in results.items():
        rows = result["depths"]
        worst = min(min(r["first_ratio"], r["last_ratio"]) for r in rows)
        out.append(
            (
                f"{kind}: consume rate at every depth >= 0.8x the 1k rate",
                f"{worst:.2f}x",
                worst >= 0.8,
            )
        )
        deepest = rows[-1]
        overhead = deepest["rss_per_message"] - PAYLOAD_BYTES
        out.append(
            (
                f"{kind}: memory per queued message beyond its {PAYLOAD_BYTES}-byte payload "
                f"< 300 B (at {deepest['depth']:,})",
                f"{overhead:.0f} B",
                overhead < 300,
            )
            if kind == "memory"
            else (
                f"{kind}: process memory per queued message (informative: messages are on disk)",
                f"{deepest['rss_per_message']:.0f} B",
                True,
            )
        )
        drained = max(r["drained_vs_empty"] for r in rows)
        out.append(
            (
                f"{kind}: RSS after draining <= 1.2x the empty process",
                f"{drained:.2f}x",
                drained <= 1.2,
            )
        )
        at_most = result["publish"][-1]
        out.append(
            (
                f"{kind}: publish rate with {at_most['idle_receivers']} idle receivers on other "
                "queues >= 0.8x with none",
                f"{at_most['ratio']:.2f}x",
                at_most["ratio"] >= 0.8,
            )
        )
        out.append(
            (
                f"{kind}: counting a queue of {deepest['depth']:,} messages < 10 ms",
                f"{deepest['count_ms']:.2f} ms",
                deepest["count_ms"] < 10,
            )
        )
    return out


def table(results: dict[str, Any]) -> str:
    """The results as Markdown: targets with verdicts, then every figure."""
    lines = ["| target | measured | verdict |", "|---|---:|---|"]
    for what, figure, met in targets(results):
        lines.append(f"| {what} | {figure} | {'met' if met else '**missed**'} |")
    lines += [
        "",
        "| backend | depth | first 5k (x 1k) | last 5k (x 1k) | RSS B/msg | drained / empty "
        "| count ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, result in results.items():
        for row in result["depths"]:
            lines.append(
                f"| {kind} | {row['depth']:,} | {row['first_ratio']:.2f} "
                f"({row['first_rate']:,.0f}/s) | {row['last_ratio']:.2f} "
                f"({row['last_rate']:,.0f}/s) | {row['rss_per_message']:.0f} "
                f"| {row['drained_vs_empty']:.2f} | {row['count_ms']:.2f} |"
            )
    lines += [
        "",
        "| backend | idle receivers | publish msg/s | x 0 receivers |",
        "|---|---:|---:|---:|",
    ]
    for kind, result in results.items():
        for row in result["publish"]:
            lines.append(
                f"| {kind} | {row['idle_receivers']} | {row['publish_rate']:,.0f} "
                f"| {row['ratio']:.2f} |"
            )
    return "\n".join(lines)


def page(results: dict[str, Any], rounds: int, seconds: float) -> str:
    """The results page (``docs/benchmarks/scale.md``)."""
    return "\n".join(
        [
            "# Scale results",
            "",
            "Written by `python -m benchmarks.scale --out docs/benchmarks`; do not edit by hand. "
            "Every measurement runs in a fresh worker process; rounds interleave the settings "
            "and each ratio is the median of the ratios within a round (figures: medians over "
            f"rounds). Rounds: {rounds}; run time {seconds:.0f} s; machine: {os.cpu_count()} "
            f"cores, Python {platform.python_version()}, load average before the run "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
            "",
            "In memory, rates are per second of the worker process's CPU time (every thread, "
            "idle receivers included): a slice lasts milliseconds, which on a shared machine "
            "the wall clock cannot time; SQLite rates are per wall-clock second. "
            f"Messages are {PAYLOAD_BYTES} bytes of JSON with the header a publisher adds; "
            "consumers receive 10 at a time and acknowledge them together.",
            "",
            table(results),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print the table, and with ``--out DIR`` write ``scale.md`` and
    ``scale.json`` there."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["memory", "sqlite"])
    parser.add_argument("--quick", action="store_true", help="depths 1k, 10k and 100k, one round")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, 1 with --quick)")
    parser.add_argument("--out", type=Path, help="write scale.md and scale.json in this folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--receivers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    depths = [1_000, 10_000, 100_000] if args.quick else [1_000, 100_000, 1_000_000]
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.perf_counter()
    results = run(args.backends, depths, rounds)
    print(table(results))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "scale.md").write_text(page(results, rounds, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
