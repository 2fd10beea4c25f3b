"""The deterministic simulation of the dispatch engine (``melange.simulation``).

Ten thousand seeds run on every CI run; the seeds that once failed are kept as regressions;
the simulated broker is checked against SQLite; a run replays exactly; and an engine with a
bug planted in it is caught and shrunk, so these tests can fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from melange.dispatch.engine import Engine
from melange.simulation import Scenario, run_seeds, shrink, simulate
from melange.simulation.__main__ import main
from melange.simulation.scenario import Fault

#: Scenarios that broke an invariant before the fix each names (kept as scenarios, not seeds:
#: what a seed generates changes as fault kinds are added).
REGRESSIONS = json.loads((Path(__file__).parent / "regressions.json").read_text())


def test_ten_thousand_seeds_keep_every_invariant() -> None:
    jobs = min(2, os.cpu_count() or 1)
    failing, rate = run_seeds(range(10_000), jobs=jobs)
    reports = [simulate(Scenario.generate(seed)).report() for seed in failing[:5]]
    assert not failing, f"{len(failing)} seeds failed ({rate:.0f} seeds/s):\n" + "\n".join(reports)


@pytest.mark.parametrize("entry", REGRESSIONS, ids=lambda entry: f"seed{entry['seed']}")
def test_schedules_that_found_a_bug_pass(entry: dict[str, object]) -> None:
    outcome = simulate(Scenario.from_json(json.dumps(entry["scenario"])))
    assert outcome.ok, f"{entry['found']}\n{outcome.report()}"


def test_a_run_is_a_pure_function_of_its_scenario() -> None:
    scenario = Scenario.generate(153)  # crashes, a cut, the cache down, a duplicate
    first = simulate(scenario, trace=True).history.trace
    second = simulate(Scenario.from_json(scenario.to_json()), trace=True).history.trace
    assert len(first) > 100
    assert first == second


@pytest.mark.parametrize("seed", range(0, 400, 7))
def test_the_simulated_broker_behaves_as_sqlite(seed: int, tmp_path: Path) -> None:
    """The same schedule on the SQLite backend keeps every invariant too, and where no fault
    or timing decides the outcome each message ends the same way on both."""
    scenario = Scenario.generate(seed)
    memory = simulate(scenario)
    sqlite = simulate(scenario, "sqlite", tmp_path)
    assert memory.ok, memory.report()
    assert sqlite.ok, sqlite.report()
    if scenario.faults or scenario.processes > 1 or scenario.workers > 1:
        return
    assert _fates(memory) == _fates(sqlite)


def _fates(outcome: object) -> dict[int, str]:
    history = outcome.history  # type: ignore[attr-defined]
    dead = {m.message_id: m.headers.get("melange_failure_attempts") for m in history.dead_letters}
    fates = {}
    for index in range(history.scenario.messages):
        message_id = f"{history.scenario.seed}-{index}"
        if message_id in dead:
            fates[index] = f"dead-lettered after {dead[message_id]}"
        else:
            fates[index] = "handled" if history.handled(index) else "left"
    return fates


def test_a_planted_fifo_bug_is_found_and_shrunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # Let a FIFO message go ahead although the previous one of its group comes back.
    monkeypatch.setattr(Engine, "may_go_ahead", staticmethod(lambda previous, same: True))
    scenario = Scenario(
        seed=7,
        messages=6,
        fifo=True,
        groups=1,
        processes=1,
        workers=4,
        publish_span=0.0,
        behaviours={0: "fail:1", 3: "fail:2"},
        faults=(Fault("stall", 30.0, 0, duration=0.5),),
    )
    outcome = simulate(scenario)
    assert any("FIFO order broken" in problem for problem in outcome.problems)
    assert "--scenario" in outcome.replay_command()
    smaller = shrink(scenario)
    assert not simulate(smaller).ok
    assert len(smaller.faults) < len(scenario.faults) or smaller.messages < scenario.messages


def test_the_command_line_replays_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "62"]) == 0
    out = capsys.readouterr().out
    assert '"seed":62' in out
    assert "every invariant holds" in out


def test_a_hypothesis_search_finds_nothing() -> None:
    from hypothesis import HealthCheck, given, settings

    from melange.simulation.search import check_scenario, scenarios

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(scenarios())
    def run(scenario: Scenario) -> None:
        check_scenario(scenario)

    run()
