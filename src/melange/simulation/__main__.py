"""Command line of the simulator: ``python -m melange.simulation --help``."""

from __future__ import annotations

import argparse
import os
import sys

from melange.simulation.run import run_seeds, shrink, simulate
from melange.simulation.scenario import Scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m melange.simulation",
        description="Run the dispatch engine in the deterministic simulator under faults.",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--seeds", type=int, default=1000, help="run seeds START..START+N-1")
    what.add_argument("--seed", type=int, help="replay one seed")
    what.add_argument("--scenario", help="replay a scenario given as JSON")
    what.add_argument("--shrink", type=int, metavar="SEED", help="minimise a failing seed")
    what.add_argument("--search", type=int, metavar="N", help="Hypothesis search, N examples")
    parser.add_argument("--start", type=int, default=0, help="first seed (with --seeds)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--broker", default="memory", choices=("memory", "sqlite"))
    parser.add_argument("--trace", action="store_true", help="print every effect of a replay")
    args = parser.parse_args(argv)

    if args.seed is not None or args.scenario is not None:
        scenario = (
            Scenario.generate(args.seed)
            if args.seed is not None
            else Scenario.from_json(args.scenario)
        )
        outcome = simulate(scenario, args.broker, trace=args.trace)
        print(scenario.to_json())
        if outcome.ok:
            if args.trace:
                print("\n".join(outcome.history.trace))
            print(f"seed {scenario.seed}: every invariant holds")
            return 0
        print(outcome.report(trace=args.trace))
        return 1
    if args.shrink is not None:
        smaller = shrink(Scenario.generate(args.shrink))
        print(simulate(smaller).report())
        return 1
    if args.search is not None:
        from melange.simulation.search import search

        return search(args.search)
    seeds = range(args.start, args.start + args.seeds)
    failing, rate = run_seeds(seeds, jobs=args.jobs)
    for seed in failing[:20]:
        print(simulate(Scenario.generate(seed)).report())
    print(
        f"{len(seeds)} seeds, {len(failing)} failing, {rate:.0f} seeds/s on {args.jobs} process(es)"
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
