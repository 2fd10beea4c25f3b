"""Deterministic simulation of the dispatch engine under faults, reproducible by seed.

The engine that the threaded and asyncio dispatchers drive (:mod:`melange.dispatch.engine`)
is run here by a third driver, :class:`~melange.simulation.world.World`, on a virtual clock,
against the real in-memory backend and deduplication cache, with several consumer processes
of several workers, and with faults injected from a seed: crashes at any step, signals,
lost connections, stalls that let leases expire, lost broker replies, duplicate deliveries,
an unreachable or slow cache, and handlers that fail, hang or raise hostile exceptions. After
every run the guarantees are checked (:mod:`melange.simulation.invariants`). A failing run
prints its seed and the command that replays it; :func:`~melange.simulation.run.shrink`
reduces it to the faults that matter.
"""

from melange.simulation.run import Outcome, run_seed, run_seeds, shrink, simulate
from melange.simulation.scenario import Fault, Scenario

__all__ = ["Fault", "Outcome", "Scenario", "run_seed", "run_seeds", "shrink", "simulate"]
