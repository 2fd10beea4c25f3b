"""Turn the rounds into medians, ratios and verdicts; write results.json, results.md, chart.png."""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.runner import SuiteResult
from benchmarks.suites import TARGETS, Suite, Target


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": len(values),
    }


def _throughput(record: dict[str, Any]) -> float:
    return float(record["n"]) / float(record["seconds"])


def _cpu_throughput(record: dict[str, Any]) -> float:
    """Messages per CPU-second of the client process."""
    return float(record["n"]) / max(float(record["cpu_s"]), 1e-9)


def summarize(suite: Suite, result: SuiteResult) -> dict[str, Any]:
    """Medians and min-max per measurement and contender, and Melange's per-round ratios."""
    melange = next((s.key for s in suite.specs if s.melange), None)
    measurements: dict[str, Any] = {}
    for measurement in suite.measurements:
        per_contender = result.rounds.get(measurement.key, {})
        entry: dict[str, Any] = {"title": measurement.title, "contenders": {}, "ratios": {}}
        for key, records in per_contender.items():
            stats: dict[str, Any] = {
                "n": records[0]["n"],
                "throughput": _spread([_throughput(r) for r in records]),
                "per_cpu_second": _spread([_cpu_throughput(r) for r in records]),
                "cpu_us_per_message": _spread([1e6 * r["cpu_s"] / r["n"] for r in records]),
            }
            if all(r.get("peak_rss_kb") for r in records):
                stats["peak_rss_mib"] = _spread([r["peak_rss_kb"] / 1024 for r in records])
            if all("requests" in r for r in records):
                stats["requests_per_message"] = _spread([r["requests"] / r["n"] for r in records])
            if all("p50_ms" in r for r in records):
                stats["p50_ms"] = _spread([r["p50_ms"] for r in records])
                stats["p99_ms"] = _spread([r["p99_ms"] for r in records])
            entry["contenders"][key] = stats
            entry.setdefault("per_round", {})[key] = {r["round"]: _throughput(r) for r in records}
        if melange in per_contender:
            mine = {r["round"]: _throughput(r) for r in per_contender[melange]}
            for key, records in per_contender.items():
                if key == melange:
                    continue
                ratios = [mine[r["round"]] / _throughput(r) for r in records if r["round"] in mine]
                entry["ratios"][key] = _spread(ratios)
        measurements[measurement.key] = entry
    linearity = cpu_linearity = None
    if melange is not None:
        small = {r["round"]: r for r in result.rounds.get("e2e", {}).get(melange, [])}
        runs = result.rounds.get("e2e_4n", {})
        big = [r for records in runs.values() for r in records if r["round"] in small]
        linearity = _spread([_throughput(r) / _throughput(small[r["round"]]) for r in big])
        # The same ratio from CPU time, which other load on the machine hardly moves.
        cpu_linearity = _spread(
            [_cpu_throughput(r) / _cpu_throughput(small[r["round"]]) for r in big]
        )
    return {
        "title": suite.title,
        "melange": melange,
        "contenders": result.contenders,
        "measurements": measurements,
        "linearity_4n_over_n": linearity,
        "cpu_linearity_4n_over_n": cpu_linearity,
        "notes": suite.notes,
        "errors": result.errors,
    }


def evaluate(target: Target, suites: dict[str, Any]) -> dict[str, Any]:
    """Whether ``target`` is met, judged on the median (and, for information, the worst round)."""
    verdict: dict[str, Any] = {
        "target": target.text,
        "threshold": target.threshold,
        "unit": target.unit,
        "at_most": target.at_most,
    }
    summary = suites.get(target.suite)
    spread = None
    if summary is not None:
        if target.linearity:
            spread = summary["linearity_4n_over_n"]
        else:
            measurement = summary["measurements"].get(target.measurement, {})
            if target.contender is None:
                key = target.numerator or summary["melange"]
                mine = measurement.get("contenders", {}).get(key, {})
                spread = mine.get(target.metric)
                if target.metric == "throughput" and mine.get("per_cpu_second"):
                    verdict["per_cpu_second"] = mine["per_cpu_second"]["median"]
            elif target.numerator is not None:
                rounds = measurement.get("per_round", {})
                top, bottom = rounds.get(target.numerator), rounds.get(target.contender)
                if top and bottom:
                    spread = _spread([top[r] / bottom[r] for r in top if r in bottom])
            else:
                spread = measurement.get("ratios", {}).get(target.contender)
    if spread is None:
        verdict.update(met=None, why="not measured (a contender was unavailable or failed)")
        return verdict
    verdict["median"] = spread["median"]
    verdict["min"] = spread["min"]
    verdict["max"] = spread["max"]
    if target.linearity:
        low, high = target.threshold, 2 - target.threshold
        verdict["met"] = low <= spread["median"] <= high
        verdict["every_round"] = low <= spread["min"] and spread["max"] <= high
    elif target.at_most:
        verdict["met"] = spread["median"] <= target.threshold
        verdict["every_round"] = spread["max"] <= target.threshold
    else:
        verdict["met"] = spread["median"] >= target.threshold
        verdict["every_round"] = spread["min"] >= target.threshold
    return verdict


def build(
    suites: list[tuple[Suite, SuiteResult]], machine: dict[str, str], mode: str, seconds: float
) -> dict[str, Any]:
    """The whole results document."""
    summaries = {suite.name: summarize(suite, result) for suite, result in suites}
    run_suites = {suite.name for suite, _ in suites}
    targets = [evaluate(t, summaries) for t in TARGETS if t.suite in run_suites]
    return {
        "mode": mode,
        "duration_s": round(seconds, 1),
        "machine": machine,
        "suites": summaries,
        "targets": targets,
        "raw": {
            suite.name: {"rounds": result.rounds, "errors": result.errors}
            for suite, result in suites
        },
    }


# -- markdown -------------------------------------------------------------------------------


def _num(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(spread: dict[str, float] | None, suffix: str = "") -> str:
    if spread is None:
        return "-"
    return f"{_num(spread['median'])}{suffix} ({_num(spread['min'])}-{_num(spread['max'])}{suffix})"


def _verdict(verdict: dict[str, Any]) -> str:
    met = verdict.get("met")
    if met is None:
        return "not measured"
    if met and verdict.get("every_round"):
        return "**met** (every round)"
    if met:
        return "**met** (median; not every round)"
    return "**missed**"


def markdown(doc: dict[str, Any]) -> str:
    """The human-readable report."""
    machine = doc["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks"
        + (" --quick" if doc["mode"] == "quick" else "")
        + "`; do not edit by hand. Each contender runs in its own process; rounds interleave "
        "the contenders (A B C, then C B A, ...) and every ratio is Melange's throughput "
        "divided by the contender's in the same round. Cells show the median over rounds and, in "
        "brackets, the min-max. CPU per message is the process CPU time (every thread) of the "
        "contender's process during the measured section; peak RSS is sampled every 20 ms "
        "during the section in the contender's process, which runs its consumer and its "
        "publisher and holds the section's prepared payloads. The asyncio rows (Melange's "
        "AsyncMessageDispatcher) sit below the threaded ones; their ratio column is the "
        "threaded dispatcher's throughput divided by theirs.",
        "",
        f"Mode: **{doc['mode']}**, run time {doc['duration_s']:.0f} s.",
        "",
        "### Machine",
        "",
        f"- {machine['cores']} cores ({machine['cpu']}), {machine['platform']}",
        f"- Python {machine['python']}, SQLite {machine['sqlite']}",
        f"- RabbitMQ {machine['rabbitmq']}, moto server {machine['moto']}",
        f"- Melange {machine['melange']}",
        "- The machine is shared: other work ran on it during the run, so single rounds are "
        "noisy; the medians of per-round ratios are what the verdicts use. Load average "
        f"(1, 5, 15 min) before the run: {machine.get('load_average_before', '?')}, after: "
        f"{machine.get('load_average', '?')}.",
        "",
        "### Targets",
        "",
        "| target | median | min-max | verdict |",
        "|---|---|---|---|",
    ]
    for verdict in doc["targets"]:
        if verdict.get("met") is None:
            lines.append(f"| {verdict['target']} | - | - | {verdict['why']} |")
            continue
        unit = verdict["unit"]
        lines.append(
            f"| {verdict['target']} | {_num(verdict['median'])}{unit} | "
            f"{_num(verdict['min'])}-{_num(verdict['max'])}{unit} | {_verdict(verdict)} |"
        )
    capacity = [v for v in doc["targets"] if "per_cpu_second" in v]
    if capacity:
        lines += [""]
        lines += [
            f"- {v['target'].split(' >=')[0]}: {_num(v['per_cpu_second'])} messages per "
            "CPU-second of the process (what one free core would sustain; the wall-clock "
            "figure above depends on the other load of the machine)."
            for v in capacity
        ]
    for summary in doc["suites"].values():
        lines += _suite_markdown(summary)
    findings = Path(__file__).with_name("findings.md")
    if findings.exists():
        lines += ["", findings.read_text(encoding="utf-8").rstrip()]
    return "\n".join(lines) + "\n"


def _suite_markdown(summary: dict[str, Any]) -> list[str]:
    contenders = summary["contenders"]
    melange = summary["melange"]
    lines = ["", f"### {summary['title']}", ""]
    lines += [f"- {note}" for note in summary["notes"]]
    lines += ["", "| contender | versions | peak RSS of its process, whole run |", "|---|---|---|"]
    for info in contenders.values():
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        if "unavailable" in info:
            last = info["unavailable"].strip().splitlines()[-1][:160]
            lines.append(f"| {info['label']} | not available: `{last}` | - |")
        else:
            lines.append(f"| {info['label']} | {versions} | {info['peak_rss_kb'] / 1024:.0f} MiB |")
    for key, entry in summary["measurements"].items():
        if not entry["contenders"]:
            continue
        latency = key == "latency"
        sqs = any("requests_per_message" in c for c in entry["contenders"].values())
        lines += ["", f"#### {entry['title']}", ""]
        header = ["contender", "N"]
        header += (
            ["p50 ms", "p99 ms"]
            if latency
            else ["msg/s", f"{contenders[melange]['label'] if melange else 'Melange'} / it"]
        )
        header += ["CPU µs/msg (client process)", "peak RSS MiB"]
        if sqs:
            header += ["HTTP requests/msg"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for ckey, stats in entry["contenders"].items():
            row = [contenders[ckey]["label"], str(stats["n"])]
            if latency:
                row += [_cell(stats.get("p50_ms")), _cell(stats.get("p99_ms"))]
            else:
                ratio = entry["ratios"].get(ckey)
                row += [_cell(stats["throughput"]), "-" if ckey == melange else _cell(ratio, "x")]
            row.append(_cell(stats["cpu_us_per_message"]))
            row.append(_cell(stats.get("peak_rss_mib")))
            if sqs:
                row.append(_cell(stats.get("requests_per_message")))
            lines.append("| " + " | ".join(row) + " |")
    if summary["linearity_4n_over_n"] is not None:
        lines += [
            "",
            "Linearity (Melange end to end, throughput at 4N / at N): "
            + _cell(summary["linearity_4n_over_n"], "x")
            + "; the same from the client's CPU time (messages per CPU-second): "
            + _cell(summary["cpu_linearity_4n_over_n"], "x"),
        ]
    if summary["errors"]:
        lines += ["", "Errors during the run:", ""]
        lines += [f"- `{e.strip().splitlines()[-1][:200]}`" for e in summary["errors"]]
    return lines


# -- chart ----------------------------------------------------------------------------------


def chart(doc: dict[str, Any], path: Path) -> None:
    """Bar chart of end-to-end throughput per suite (median, min-max whiskers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = [
        s for s in doc["suites"].values() if s["measurements"].get("e2e", {}).get("contenders")
    ]
    if not suites:
        return
    figure, axes = plt.subplots(1, len(suites), figsize=(4.6 * len(suites), 5.0), squeeze=False)
    for axis, summary in zip(axes[0], suites, strict=True):
        entry = summary["measurements"]["e2e"]["contenders"]
        labels, medians, lows, highs, colors = [], [], [], [], []
        for key in [k for k in summary["contenders"] if k in entry]:
            spread = entry[key]["throughput"]
            labels.append(
                textwrap.fill(
                    summary["contenders"][key]["label"],
                    14,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
            medians.append(spread["median"])
            lows.append(spread["median"] - spread["min"])
            highs.append(spread["max"] - spread["median"])
            if key == summary["melange"]:
                colors.append("#2a7ab9")
            elif key.startswith("melange_async"):
                colors.append("#7fb3dc")  # Melange's asyncio dispatcher
            else:
                colors.append("#9aa5b1")
        axis.bar(range(len(labels)), medians, yerr=[lows, highs], color=colors, capsize=4)
        axis.set_xticks(range(len(labels)), labels, fontsize=7)
        axis.set_ylim(0, max(m + h for m, h in zip(medians, highs, strict=True)) * 1.12)
        axis.set_title(f"{summary['title']}: end to end", fontsize=10)
        axis.set_ylabel("messages / second")
        for index, value in enumerate(medians):
            axis.annotate(
                f"{value:,.0f}",
                (index, value),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 3),
                textcoords="offset points",
            )
    figure.suptitle(
        f"Melange threaded (blue) and asyncio (light blue) against raw clients and peers: "
        f"median of {doc['mode']} rounds, min-max whiskers",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(doc: dict[str, Any], directory: Path) -> None:
    """Write results.json, results.md and chart.png into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    (directory / "results.md").write_text(markdown(doc))
    chart(doc, directory / "chart.png")
