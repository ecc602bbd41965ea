"""The report model: trials and their checker results → ``report.json`` (pure).

``report.json`` always has at least (conformance.md §6): ``verdict``, ``properties`` (id →
``{verdict, valid, invalid, unknown}``) and ``trials`` (each with ``seed``, ``statuses`` as a
status-code → count map, ``winners``, ``release_spread_ms`` and the per-property verdicts).
The full versioned schema and the other formats (JUnit, Markdown, HTML) build on this model.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from harness.checkers import CheckResult, Verdict, summarize, worst
from harness.history import Trial

REPORT_SCHEMA = "raceharness/report/v1"
EXIT_FOR_VERDICT = {"valid": 0, "invalid": 1, "unknown": 3}


def racer_completions(trial: Trial) -> list[dict[str, Any]]:
    return [done.value for inv, done in trial.completions("turn")
            if inv.get("role") == "racer" and done is not None]


def trial_summary(trial: Trial, results: dict[str, CheckResult]) -> dict[str, Any]:
    racers = racer_completions(trial)
    statuses = Counter(str(v.get("status")) for v in racers)
    spread_ns = trial.meta.get("send_spread_ns")
    arrivals = [v["server_arrival_ns"] for v in racers if "server_arrival_ns" in v]
    return {
        "trial": trial.meta.get("trial"),
        "seed": trial.meta.get("seed"),
        "chat_id": trial.meta.get("chat_id"),
        "n": trial.meta.get("n"),
        "sync": trial.meta.get("sync"),
        "statuses": dict(sorted(statuses.items())),
        "winners": sum(1 for v in racers if v.get("status") == 200),
        "release_spread_ms": None if spread_ns is None else round(spread_ns / 1e6, 3),
        "server_arrival_spread_ms": (round((max(arrivals) - min(arrivals)) / 1e6, 3)
                                     if len(arrivals) > 1 else None),
        "verdict": worst(r.verdict for r in results.values()),
        "properties": {name: {"verdict": r.verdict, "reason": r.reason, "ops": list(r.ops)}
                       for name, r in results.items()},
    }


def build_report(trials: Sequence[Trial], results: Sequence[dict[str, CheckResult]], *,
                 config: dict[str, Any], reproduce: str) -> dict[str, Any]:
    counts = summarize(list(results))
    properties: dict[str, dict[str, Any]] = {}
    for name, c in counts.items():
        verdict: Verdict = "invalid" if c["invalid"] else "unknown" if c["unknown"] else "valid"
        properties[name] = {"verdict": verdict, **c}
    summaries = [trial_summary(t, r) for t, r in zip(trials, results, strict=True)]
    overall = worst(p["verdict"] for p in properties.values()) if properties else "unknown"
    spreads = [s["release_spread_ms"] for s in summaries if s["release_spread_ms"] is not None]
    first_failure = next((s for s in summaries if s["verdict"] == "invalid"), None)
    return {
        "schema": REPORT_SCHEMA,
        "verdict": overall,
        "exit_code": EXIT_FOR_VERDICT[overall],
        "config": config,
        "reproduce": reproduce,
        "release_spread_ms": {"median": statistics.median(spreads) if spreads else None,
                              "max": max(spreads) if spreads else None},
        "properties": properties,
        "first_failure": None if first_failure is None else {
            "trial": first_failure["trial"], "seed": first_failure["seed"],
            "properties": {k: v for k, v in first_failure["properties"].items()
                           if v["verdict"] == "invalid"}},
        "trials": summaries,
    }


def verdict_table(report: dict[str, Any]) -> str:
    """A short console table: one line per property, then the verdict."""
    rows = [f"{'property':32} {'verdict':8} {'valid':>5} {'invalid':>7} {'unknown':>7}"]
    for name, p in report["properties"].items():
        rows.append(f"{name:32} {p['verdict']:8} {p['valid']:>5} {p['invalid']:>7} "
                    f"{p['unknown']:>7}")
    spread = report["release_spread_ms"]
    if spread["median"] is not None:
        rows.append(f"release spread: median {spread['median']:.3f} ms, max {spread['max']:.3f} ms")
    failure = report.get("first_failure")
    if failure:
        for name, p in failure["properties"].items():
            rows.append(f"FAILED {name} (trial {failure['trial']}, seed {failure['seed']}): "
                        f"{p['reason']}")
    rows.append(f"verdict: {report['verdict']}   reproduce: {report['reproduce']}")
    return "\n".join(rows)
