"""Run the contenders' workers round after round and collect what they measure.

Each contender lives in its own worker process (:mod:`benchmarks.worker`). A round runs every
measurement for every contender in turn (A B C, then the next measurement A B C...), so slow
drift of the machine's load touches all contenders alike, and the ratios are taken within a
round. Even rounds run the contenders in the reverse order (C B A), so that none always runs
right after the same one.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: An operation that takes longer than this has hung; the harness gives up on it (every
#: operation takes seconds; a broker that stops answering must not stall the whole run).
OP_TIMEOUT = 180.0


class WorkerError(RuntimeError):
    """A worker failed to start or an operation failed in it."""


@dataclass
class ContenderSpec:
    """A contender: its class in a worker, its parameters and the interpreter to run it."""

    key: str
    target: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    python: str = sys.executable
    melange: bool = False


class Worker:
    """One contender's process, answering one operation at a time."""

    def __init__(self, spec: ContenderSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.key}.log"
        self._log = self.log_path.open("ab")
        env = dict(os.environ)
        # The worker imports this package from the checkout, under any interpreter; only the
        # worker's own interpreter decides which melange it sees.
        env["PYTHONPATH"] = str(ROOT)
        env.pop("PYTHONSTARTUP", None)
        self._process = subprocess.Popen(
            [spec.python, "-m", "benchmarks.worker", spec.target, json.dumps(spec.params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=str(ROOT),
            env=env,
            text=True,
        )
        self.peak_rss_kb = 0
        try:
            answer = self._read(120.0)
        except WorkerError:
            self.close()
            raise
        self.versions: dict[str, str] = answer["result"]["versions"]

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else ""
        if not line:
            self.close()
            raise WorkerError(
                f"{self.spec.key}: worker {'timed out' if not ready else 'exited'} "
                f"(exit code {self._process.returncode}); last log lines:\n{self.tail()}"
            )
        answer: dict[str, Any] = json.loads(line)
        if not answer["ok"]:
            raise WorkerError(f"{self.spec.key}: {answer['error'].strip()}")
        self.peak_rss_kb = max(self.peak_rss_kb, int(answer.get("peak_rss_kb", 0)))
        return answer

    def run(self, op: str, **args: Any) -> dict[str, Any]:
        """Run one operation; returns its result plus ``cpu_s`` and ``peak_rss_kb``."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        stdin.flush()
        answer = self._read(OP_TIMEOUT)
        result: dict[str, Any] = answer["result"]
        # CPU of the whole operation, untimed preparation included (the result's own cpu_s
        # covers the measured section only).
        result["op_cpu_s"] = answer["cpu_s"]
        return result

    @property
    def alive(self) -> bool:
        """The worker process is still running."""
        return self._process.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines the worker wrote to its log."""
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Ask the worker to quit, and make sure it does."""
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.write('{"op": "quit"}\n')
                self._process.stdin.flush()
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


@dataclass
class Measurement:
    """One measurement of a suite: the operation each contender runs, with its arguments.

    ``ops`` maps a contender key to ``(operation, arguments)``; contenders absent from it do
    not take part (e.g. a peer without batch publishing).
    """

    key: str
    title: str
    ops: dict[str, tuple[str, dict[str, Any]]]


@dataclass
class SuiteResult:
    """What a suite measured: per measurement, per contender, one record per round."""

    name: str
    contenders: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def run_suite(
    name: str,
    specs: list[ContenderSpec],
    measurements: list[Measurement],
    rounds: int,
    log_dir: Path,
    progress: Any = print,
) -> SuiteResult:
    """Start the workers, run ``rounds`` interleaved rounds, stop the workers."""
    result = SuiteResult(name)
    workers: dict[str, Worker] = {}
    for spec in specs:
        info: dict[str, Any] = {"label": spec.label, "melange": spec.melange}
        try:
            workers[spec.key] = Worker(spec, log_dir)
            info["versions"] = workers[spec.key].versions
        except WorkerError as exc:
            info["unavailable"] = _first_lines(str(exc))
            progress(f"  {spec.key}: not available: {_last_line(str(exc))}")
        result.contenders[spec.key] = info
    try:
        for round_number in range(1, rounds + 1):
            started = time.monotonic()
            for measurement in measurements:
                per_contender = result.rounds.setdefault(measurement.key, {})
                for key, (op, args) in round_order(measurement.ops, round_number):
                    worker = workers.get(key)
                    if worker is None or not worker.alive:
                        continue
                    try:
                        record = worker.run(op, **args)
                    except WorkerError as exc:
                        message = f"round {round_number} {measurement.key} {key}: {exc}"
                        result.errors.append(_first_lines(message, 20))
                        progress(f"  ERROR {_last_line(message)}")
                        _reset(worker, result, progress)
                        continue
                    record["round"] = round_number
                    per_contender.setdefault(key, []).append(record)
            elapsed = time.monotonic() - started
            progress(f"  {name}: round {round_number}/{rounds} in {elapsed:.1f}s")
    finally:
        for key, worker in workers.items():
            result.contenders[key]["peak_rss_kb"] = worker.peak_rss_kb
            worker.close()
    return result


def round_order(
    ops: dict[str, tuple[str, dict[str, Any]]], round_number: int
) -> list[tuple[str, tuple[str, dict[str, Any]]]]:
    """The contenders of a measurement in the order they run in round ``round_number``: as
    listed in odd rounds, reversed in even ones, so that no contender always runs right
    after the same one (the machine's state after a run, its other load drifting over a
    round) and a per-round ratio is not biased by its order."""
    items = list(ops.items())
    return items if round_number % 2 else items[::-1]


def _reset(worker: Worker, result: SuiteResult, progress: Any) -> None:
    # What a failed operation left in the queue must not count in the next one.
    if not worker.alive:
        return
    try:
        worker.run("reset")
    except WorkerError as exc:
        result.errors.append(_first_lines(f"reset {worker.spec.key}: {exc}", 20))
        progress(f"  ERROR reset {worker.spec.key}: {_last_line(str(exc))}")


def _first_lines(text: str, count: int = 12) -> str:
    lines = text.strip().splitlines()
    if len(lines) <= count:
        return "\n".join(lines)
    return "\n".join([*lines[:2], "...", *lines[-(count - 3) :]])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else text
