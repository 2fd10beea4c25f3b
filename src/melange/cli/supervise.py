"""``melange consume --processes N`` and ``--reload``: a supervisor of worker processes.

The supervisor imports nothing of the service: each worker is a fresh ``melange consume``
process with the same arguments (less ``--processes`` and ``--reload``), started in a
process group of its own, so that Ctrl-C reaches the supervisor only and it decides.

- A worker that exits or is killed while the supervisor runs is started again after a pause
  that doubles with each quick failure (0.5 s, 1 s, 2 s ... up to 30 s); a worker that ran
  for a minute starts over from the shortest pause.
- SIGTERM or SIGINT: every worker gets SIGTERM and finishes the messages in hand; the
  supervisor exits 0 once they all have (1 if one of them failed). A second signal kills
  the workers at once.
- ``--reload``: when a ``.py`` file under the current directory changes, every worker is
  stopped (as by SIGTERM) and started again (needs ``watchfiles``: ``melange[reload]``).
- A worker whose supervisor is gone (killed with SIGKILL) stops by itself, finishing the
  messages in hand, rather than consume unsupervised.
- Ports: worker ``i`` (from 0) of ``--metrics-port P`` or ``--health-port P`` listens on
  ``P + i``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

_log = logging.getLogger("melange.cli.supervise")

#: Set in a worker's environment: the supervisor's process id.
SUPERVISOR_ENV = "MELANGE_SUPERVISOR_PID"
#: Set in a worker's environment: the worker's index, from 0.
WORKER_INDEX_ENV = "MELANGE_WORKER_INDEX"

FIRST_PAUSE = 0.5
LONGEST_PAUSE = 30.0
#: Seconds a worker must run for its next failure to be paused the shortest time again.
HEALTHY_AFTER = 60.0


@dataclass
class Worker:
    """One worker process and its restart bookkeeping."""

    index: int
    arguments: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_failures: int = 0
    start_at: float = 0.0

    def start(self) -> None:
        env = dict(os.environ)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[WORKER_INDEX_ENV] = str(self.index)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "melange.cli", *self.arguments], env=env, process_group=0
        )
        self.started = time.monotonic()
        say(f"worker {self.index} started (pid {self.process.pid})")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def say(text: str) -> None:
    """One line of the supervisor on standard error."""
    click.echo(f"supervisor: {text}", err=True)


def exit_description(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def worker_arguments(base: Sequence[str], index: int, ports: dict[str, int]) -> list[str]:
    """``base`` with each port option in ``ports`` (``--metrics-port`` ...) moved by ``index``."""
    arguments = list(base)
    for option, port in ports.items():
        if port:
            arguments += [option, str(port + index)]
    return arguments


class Supervisor:
    """Runs ``processes`` workers of ``arguments`` until SIGTERM/SIGINT (see the module)."""

    def __init__(
        self,
        arguments: Sequence[str],
        processes: int,
        *,
        ports: dict[str, int] | None = None,
        reload: bool = False,
        watch: Path | None = None,
    ) -> None:
        self.workers = [
            Worker(i, worker_arguments(arguments, i, ports or {})) for i in range(processes)
        ]
        self.reload = reload
        self.watch = watch or Path.cwd()
        self._stopping = threading.Event()
        self._changed = threading.Event()
        self._watch_stop = threading.Event()

    def run(self) -> int:
        """Supervise until stopped; the exit status (0: every worker drained cleanly)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        watcher = self._start_watcher() if self.reload else None
        try:
            for worker in self.workers:
                worker.start()
            while True:
                if self._stopping.is_set():
                    if not any(w.running for w in self.workers):
                        break
                elif self._changed.is_set():
                    self._changed.clear()
                    self._restart_all()
                else:
                    self._restart_exited()
                time.sleep(0.05)
        finally:
            self._watch_stop.set()
            if watcher is not None:
                watcher.join(timeout=5)
            for sig, old in previous.items():
                signal.signal(sig, old)
        # A worker that was still starting when asked to stop dies of the SIGTERM itself,
        # before taking any message: that is a clean stop too.
        clean = (0, -signal.SIGTERM)
        failed = [
            w for w in self.workers if w.process is not None and w.process.returncode not in clean
        ]
        for worker in failed:
            code = worker.process.returncode if worker.process is not None else 0
            say(f"worker {worker.index} stopped with {exit_description(code)}")
        say("every worker stopped" if not failed else "stopped, with failures")
        return 1 if failed else 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping.is_set():
            for worker in self.workers:
                worker.signal(signal.SIGKILL)
            return
        self._stopping.set()
        say(f"{signal.Signals(signum).name}: every worker finishes the messages in hand")
        for worker in self.workers:
            worker.signal(signal.SIGTERM)

    def _restart_exited(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None or worker.running:
                if process is None and now >= worker.start_at:
                    worker.start()
                continue
            code = process.returncode
            worker.process = None
            if now - worker.started >= HEALTHY_AFTER:
                worker.quick_failures = 0
            pause = min(LONGEST_PAUSE, FIRST_PAUSE * 2**worker.quick_failures)
            worker.quick_failures += 1
            worker.start_at = now + pause
            say(
                f"worker {worker.index} (pid {process.pid}) stopped with "
                f"{exit_description(code)}; starting it again in {pause:g} s"
            )

    def _restart_all(self) -> None:
        say("source changed: restarting every worker")
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.process is not None:
                worker.process.wait()
        for worker in self.workers:
            worker.quick_failures = 0
            if not self._stopping.is_set():
                worker.start()

    def _start_watcher(self) -> threading.Thread:
        from watchfiles import PythonFilter, watch

        def follow() -> None:
            for _changes in watch(
                self.watch, watch_filter=PythonFilter(), stop_event=self._watch_stop
            ):
                self._changed.set()

        thread = threading.Thread(target=follow, name="melange-reload", daemon=True)
        thread.start()
        return thread


def stop_without_supervisor() -> None:
    """In a worker: stop (as by SIGTERM) once the supervisor that started it is gone."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor:
        return

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(1.0)
        _log.warning("the supervisor (pid %s) is gone: stopping", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="melange-supervisor-watch", daemon=True).start()


def command_line(ctx: click.Context, leave_out: set[str]) -> list[str]:
    """The arguments that run ``ctx``'s command again with the same parameters, less those
    named in ``leave_out`` (options left at their default are left out too)."""
    arguments: list[str] = [ctx.info_name or ctx.command.name or ""]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        if name in leave_out or value is None:
            continue
        if isinstance(param, click.Argument):
            arguments.append(str(value))
            continue
        if not isinstance(param, click.Option) or value == param.default:
            continue
        if param.multiple:
            for item in value:
                arguments += [param.opts[0], str(item)]
            continue
        if param.is_flag:
            if value:
                arguments.append(param.opts[0])
            elif param.secondary_opts:
                arguments.append(param.secondary_opts[0])
            continue
        arguments += [param.opts[0], str(value)]
    return arguments


__all__ = [
    "SUPERVISOR_ENV",
    "WORKER_INDEX_ENV",
    "Supervisor",
    "command_line",
    "stop_without_supervisor",
    "worker_arguments",
]
