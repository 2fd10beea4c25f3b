"""Running scenarios: one, a range of seeds, or a search that shrinks what fails.

``python -m melange.simulation`` (or ``make simulate``) runs seeds and prints each failing
one with the command that replays it::

    python -m melange.simulation --seeds 10000            # seeds 0..9999
    python -m melange.simulation --seed 4242 --trace      # replay one, with its trace
    python -m melange.simulation --scenario '{"seed":...}'   # replay a shrunk scenario
    python -m melange.simulation --shrink 4242            # minimise a failing seed
    python -m melange.simulation --search 2000            # Hypothesis search and shrink
"""

from __future__ import annotations

import multiprocessing
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from melange.simulation.invariants import History, check
from melange.simulation.scenario import Scenario
from melange.simulation.world import World, engine_logs_silenced


@dataclass
class Outcome:
    """What one run found: the violated invariants (none when it passed) and its history."""

    scenario: Scenario
    problems: list[str]
    history: History

    @property
    def ok(self) -> bool:
        return not self.problems

    def replay_command(self) -> str:
        """The one-line command that replays this run exactly."""
        if self.scenario == Scenario.generate(self.scenario.seed):
            return f"python -m melange.simulation --seed {self.scenario.seed} --trace"
        return (
            "python -m melange.simulation --trace --scenario "
            f"{shlex.quote(self.scenario.to_json())}"
        )

    def report(self, trace: bool = False) -> str:
        """The problems, the scenario's faults, the replay command (and the trace)."""
        lines = [f"seed {self.scenario.seed}: {len(self.problems)} invariant(s) violated"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines += [f"  fault: {fault}" for fault in self.scenario.faults]
        lines.append(f"  replay: {self.replay_command()}")
        if trace:
            lines += [f"    {line}" for line in self.history.trace]
        return "\n".join(lines)


def simulate(
    scenario: Scenario, broker: str = "memory", tmp: Path | None = None, trace: bool = False
) -> Outcome:
    """Run ``scenario`` on the simulated ``broker`` (``memory`` or ``sqlite``) and check it;
    with ``trace`` every effect is written to the history's trace."""
    with engine_logs_silenced():
        history = World(scenario, broker, tmp, trace).run()
    return Outcome(scenario, check(history), history)


def run_seed(seed: int) -> Outcome:
    """Run the scenario generated from ``seed``."""
    return simulate(Scenario.generate(seed))


def _failing_seeds(seeds: Sequence[int]) -> list[int]:
    return [seed for seed in seeds if not run_seed(seed).ok]


def run_seeds(seeds: Iterable[int], jobs: int = 1) -> tuple[list[int], float]:
    """Run ``seeds`` on ``jobs`` processes; returns the failing seeds and seeds per second."""
    seeds = list(seeds)
    started = time.perf_counter()
    if jobs <= 1 or len(seeds) < 200:
        failing = _failing_seeds(seeds)
    else:
        chunks = [seeds[i::jobs] for i in range(jobs)]
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            failing = sorted(seed for part in pool.map(_failing_seeds, chunks) for seed in part)
    elapsed = time.perf_counter() - started
    return failing, len(seeds) / elapsed if elapsed else float("inf")


def shrink(scenario: Scenario) -> Scenario:
    """A smaller scenario that still fails: faults, messages and behaviours removed one at a
    time while some invariant stays violated (delta debugging)."""

    def fails(candidate: Scenario) -> bool:
        return not simulate(candidate).ok

    if not fails(scenario):
        raise ValueError(f"seed {scenario.seed} passes: nothing to shrink")
    changed = True
    while changed:
        changed = False
        for index in range(len(scenario.faults)):
            faults = scenario.faults[:index] + scenario.faults[index + 1 :]
            candidate = replace(scenario, faults=faults)
            if fails(candidate):
                scenario, changed = candidate, True
                break
        else:
            for key in sorted(scenario.behaviours):
                behaviours = {k: v for k, v in scenario.behaviours.items() if k != key}
                candidate = replace(scenario, behaviours=behaviours)
                if fails(candidate):
                    scenario, changed = candidate, True
                    break
            else:
                if scenario.messages > 1:
                    fewer = scenario.messages - 1
                    behaviours = {k: v for k, v in scenario.behaviours.items() if k < fewer}
                    candidate = replace(scenario, messages=fewer, behaviours=behaviours)
                    if fails(candidate):
                        scenario, changed = candidate, True
    return scenario


__all__ = ["Outcome", "run_seed", "run_seeds", "shrink", "simulate"]
