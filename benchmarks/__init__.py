"""Melange's benchmark harness: Melange against the raw broker clients and peer libraries.

Run it with ``python -m benchmarks`` (full run) or ``python -m benchmarks --quick`` (a smoke run
of a couple of minutes). Every contender runs in its own worker process, so the peak memory and
the CPU time of one never include another's; the rounds interleave the contenders to cancel
drift in the machine's load. Results go to ``docs/benchmarks/``.

This package imports nothing but the standard library at import time, because the worker
also runs under the interpreter of the released 7.2.0 package, which has none of Melange 8's
dependencies.
"""
