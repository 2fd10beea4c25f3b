"""A Hypothesis search over scenarios: Hypothesis draws them and shrinks a failing one.

Hypothesis (a development dependency) explores the same space as
:meth:`~melange.simulation.scenario.Scenario.generate`, and when a scenario breaks an
invariant it shrinks it to a minimal one (fewer faults, fewer messages, simpler behaviours),
printed with the command that replays it.
"""

from __future__ import annotations

from typing import Any

from melange.simulation.run import simulate
from melange.simulation.scenario import (
    CALL_POINTS,
    CRASH_POINTS,
    FAULT_KINDS,
    Fault,
    Scenario,
)


def scenarios() -> Any:
    """The Hypothesis strategy of scenarios."""
    from hypothesis import strategies as st

    durations = st.sampled_from((0.5, 3.0, 12.0, 40.0))

    @st.composite
    def fault(draw: Any, processes: int) -> Fault:
        kind = draw(st.sampled_from(FAULT_KINDS))
        at = draw(st.floats(0.0, 25.0, allow_nan=False).map(lambda t: round(t, 3)))
        process = draw(st.integers(0, processes - 1))
        if kind == "crash_at":
            return Fault(kind, at, process, point=draw(st.sampled_from(CRASH_POINTS)))
        if kind in ("drop_reply", "drop_request"):
            return Fault(kind, at, process, point=draw(st.sampled_from(CALL_POINTS)))
        if kind in ("stop_twice", "cut", "stall", "cache_down", "cache_slow", "broker_slow"):
            return Fault(kind, at, process, duration=draw(durations))
        return Fault(kind, at, process)

    behaviour = st.one_of(
        st.integers(1, 6).map(lambda k: f"fail:{k}"),
        st.integers(1, 5).map(lambda k: f"hostile:{k}"),
        st.sampled_from(("non_retryable", "exit", "poison", "slow:12", "slow:40")),
    )

    @st.composite
    def scenario(draw: Any) -> Scenario:
        messages = draw(st.integers(1, 20))
        processes = draw(st.integers(1, 3))
        behaviours = draw(st.dictionaries(st.integers(0, messages - 1), behaviour, max_size=6))
        faults = draw(st.lists(fault(processes), max_size=5))
        heartbeat = draw(st.booleans())  # see Scenario.generate: off only with a DLQ
        return Scenario(
            seed=draw(st.integers(0, 2**31)),
            messages=messages,
            fifo=draw(st.booleans()),
            groups=draw(st.sampled_from((1, 2, 4))),
            processes=processes,
            workers=draw(st.sampled_from((1, 2, 4))),
            batch=draw(st.sampled_from((1, 4, 10))),
            consumers=draw(st.sampled_from((1, 2))),
            dedup=draw(st.booleans()),
            fail_open=draw(st.booleans()),
            semantics=draw(st.sampled_from(("lease", "connection"))),
            visibility_timeout=draw(st.sampled_from((4.0, 10.0, 30.0))),
            heartbeat=heartbeat,
            dedup_lease=draw(st.sampled_from((3.0, 6.0, 15.0))),
            max_attempts=draw(st.integers(1, 5)),
            immediate_retries=draw(st.integers(0, 1)),
            initial_delay=draw(st.sampled_from((0.0, 0.5, 1.0))),
            dead_letter_queue=draw(st.booleans()) or not heartbeat,
            publish_span=draw(st.sampled_from((0.0, 2.0, 10.0))),
            behaviours=behaviours,
            faults=tuple(sorted(faults, key=lambda f: f.at)),
        )

    return scenario()


def check_scenario(scenario: Scenario) -> None:
    """Run ``scenario``; fail with its report (and replay command) if an invariant breaks."""
    outcome = simulate(scenario)
    if not outcome.ok:
        raise AssertionError(outcome.report())


def search(examples: int) -> int:
    """Run ``examples`` Hypothesis-drawn scenarios; print the shrunk failure, if any."""
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(scenarios())
    def run(scenario: Scenario) -> None:
        check_scenario(scenario)

    try:
        run()
    except AssertionError as failure:
        print(failure)
        return 1
    print(f"{examples} scenarios, every invariant holds")
    return 0


__all__ = ["check_scenario", "scenarios", "search"]
