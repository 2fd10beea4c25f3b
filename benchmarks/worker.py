"""A contender's own process: runs the operations the harness sends it, one at a time.

Started as ``python -m benchmarks.worker module:Class '<json params>'``. It reads one JSON
command per line on stdin (``{"op": "e2e", "args": {"n": 1000}}``) and answers one JSON line
on the original stdout with the result, the process CPU seconds the operation took and the
peak resident memory of the process so far. A contender with a ``before_operation(op)``
method has it called before each operation, outside the timed section. Anything the
libraries print goes to stderr.

Standard library only at import time: it also runs under the released 7.2.0 interpreter.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_kb() -> int:
    # Linux reports ru_maxrss in kilobytes.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main(argv: list[str]) -> int:
    """Serve commands until stdin closes or a ``quit`` command arrives."""
    target, params = argv[0], json.loads(argv[1])
    # Keep the protocol channel for ourselves; library output goes to stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    module_name, _, class_name = target.partition(":")
    try:
        contender = getattr(importlib.import_module(module_name), class_name)(**params)
        versions = contender.setup()
    except BaseException:
        reply({"ok": False, "error": traceback.format_exc()})
        return 1
    reply({"ok": True, "result": {"versions": versions}, "peak_rss_kb": _peak_rss_kb()})
    # A contender may bring its broker to a known state before each operation, untimed.
    prepare = getattr(contender, "before_operation", None)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        try:
            if prepare is not None and command["op"] != "reset":
                prepare(command["op"])
        except BaseException:
            reply({"ok": False, "error": traceback.format_exc()})
            continue
        cpu, wall = _cpu_seconds(), time.perf_counter()
        try:
            result = getattr(contender, "op_" + command["op"])(**command.get("args", {}))
        except BaseException:
            reply({"ok": False, "error": traceback.format_exc()})
            continue
        reply(
            {
                "ok": True,
                "result": result,
                "cpu_s": _cpu_seconds() - cpu,
                "wall_s": time.perf_counter() - wall,
                "peak_rss_kb": _peak_rss_kb(),
            }
        )
    try:
        contender.teardown()
    except Exception:
        traceback.print_exc()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
