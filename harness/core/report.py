"""The report model: trials and their checker results → ``report.json`` (pure).

``report.json`` always has at least (conformance.md §6): ``verdict``, ``properties`` (id →
``{verdict, valid, invalid, unknown}``) and ``trials`` (each with ``seed``, ``statuses`` as a
status-code → count map, ``winners``, ``release_spread_ms`` and the per-property verdicts).
The full versioned schema and the other formats (JUnit, Markdown, HTML) build on this model.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from raceharness.core.checks.base import CheckResult, Verdict, summarize, worst
from raceharness.core.history import Trial

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
        "scenario": trial.meta.get("scenario"),
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


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    return {"median": statistics.median(present) if present else None,
            "max": max(present) if present else None}


def build_report(trials: Sequence[Trial], results: Sequence[dict[str, CheckResult]], *,
                 config: dict[str, Any], reproduce: str,
                 trial_reproduce: Callable[[Any], str] | None = None) -> dict[str, Any]:
    """The report model. ``trial_reproduce`` (seed → command line), when given, adds a
    ``reproduce`` line to every trial summary."""
    counts = summarize(list(results))
    properties: dict[str, dict[str, Any]] = {}
    for name, c in counts.items():
        verdict: Verdict = "invalid" if c["invalid"] else "unknown" if c["unknown"] else "valid"
        properties[name] = {"verdict": verdict, **c}
    summaries = [trial_summary(t, r) for t, r in zip(trials, results, strict=True)]
    if trial_reproduce is not None:
        for summary in summaries:
            summary["reproduce"] = trial_reproduce(summary["seed"])
    overall = worst(p["verdict"] for p in properties.values()) if properties else "unknown"
    first_failure = next((s for s in summaries if s["verdict"] == "invalid"), None)
    return {
        "schema": REPORT_SCHEMA,
        "verdict": overall,
        "exit_code": EXIT_FOR_VERDICT[overall],
        "config": config,
        "reproduce": reproduce,
        "release_spread_ms": _spread([s["release_spread_ms"] for s in summaries]),
        "server_arrival_spread_ms": _spread([s["server_arrival_spread_ms"] for s in summaries]),
        "properties": properties,
        "first_failure": None if first_failure is None else {
            "trial": first_failure["trial"], "seed": first_failure["seed"],
            "properties": {k: v for k, v in first_failure["properties"].items()
                           if v["verdict"] == "invalid"}},
        "trials": summaries,
    }


# -- re-rendering a saved history (``harness report DIR``) ---------------------------------------

_CONFIG_FROM_RUN = ("command", "scenarios", "n", "trials", "seed", "sync", "faults", "target")
_CONFIG_FROM_TRIAL = ("n", "sync", "provider_access", "db_access", "losers_fast_bound_ms")
RACE_SCENARIO = "same-chat-burst"


def config_from_history(run_meta: Mapping[str, Any], trials: Sequence[Trial]) -> dict[str, Any]:
    """The ``config`` of a report rebuilt from a history's run header; a setting the header
    lacks is taken from the trials when they all agree on it (else ``None``: per scenario)."""
    config = {key: run_meta[key] for key in _CONFIG_FROM_RUN if key in run_meta}
    for key in _CONFIG_FROM_TRIAL:
        seen = [t.meta.get(key) for t in trials]
        if seen and config.get(key) is None:
            config[key] = seen[0] if all(v == seen[0] for v in seen) else None
    config.update({key: value for key, value in run_meta.items()
                   if key not in config and key != "schema"})
    return config


def reproduce_from_history(run_meta: Mapping[str, Any], trials: Sequence[Trial],
                           seed: Any = None, scenario: str | None = None) -> str:
    """The command line that re-runs a recorded run, or one trial of it (given its ``seed`` and
    ``scenario``): ``harness race`` for a same-chat-burst run, else ``harness run``."""
    if seed is None and isinstance(run_meta.get("reproduce"), str):
        return str(run_meta["reproduce"])
    first = trials[0].meta if trials else {}
    single = seed is not None
    seed = run_meta.get("seed", first.get("seed")) if seed is None else seed
    names = [scenario] if scenario else [str(s) for s in run_meta.get("scenarios") or ()]
    race = run_meta.get("command", "race" if names in ([], [RACE_SCENARIO]) else "run") == "race"
    given = run_meta.get("scenario_args") or {}
    names = [str(given.get(name, name)) for name in names]
    parts = ["harness race" if race else f"harness run {' '.join(names)}"]
    n = run_meta.get("n", first.get("n") if race else None)
    parts += [f"--n {n}"] if n is not None else []
    parts += [f"--seed {seed}"] if seed is not None else []
    count = 1 if single else run_meta.get("trials", len(trials) if race else None)
    # one trial of a scenario run needs --trials 1: without it the scenario's own count runs
    parts += [f"--trials {count}"] if count is not None and (count != 1 or not race) else []
    sync = run_meta.get("sync", first.get("sync"))
    parts += [f"--sync {sync}"] if sync not in (None, "last-byte") else []
    if "reproduce_flags" in run_meta:  # every option that shaped the run, secrets as $ENV
        parts += [str(flag) for flag in run_meta["reproduce_flags"]]
    else:  # a history written before the flags were recorded
        target = run_meta.get("target", "embedded")
        parts += [f"--target {target} --token $HARNESS_TOKEN"] if target != "embedded" else []
    parts += [f"--fault {f}" for f in run_meta.get("faults") or ()]
    return " ".join(parts)


def rebuild_report(run_meta: Mapping[str, Any], trials: Sequence[Trial],
                   results: Sequence[dict[str, CheckResult]],
                   scenario_summaries: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The report of a saved history, as the run that wrote it made it: config and reproduce
    lines from the run header, and the per-scenario table when the header names scenarios (a
    scenario with no trial in the history was skipped, for a reason the history does not
    keep)."""
    report = build_report(
        trials, results, config=config_from_history(run_meta, trials),
        reproduce=reproduce_from_history(run_meta, trials))
    for summary in report["trials"]:
        summary["reproduce"] = reproduce_from_history(run_meta, trials, seed=summary["seed"],
                                                      scenario=summary.get("scenario"))
    names = list(run_meta.get("scenarios") or ())
    if names:
        report["scenarios"] = {}
        for name in names:
            mine = [s for s in report["trials"] if s.get("scenario") == name]
            report["scenarios"][name] = {
                "summary": (scenario_summaries or {}).get(name),
                "skipped": None if mine else "no trial in the history",
                "trials": len(mine),
                "verdict": worst(s["verdict"] for s in mine) if mine else "skipped"}
    return report


REASON_WIDTH = 160  # characters of a reason on the console (report.json has them whole)


def _first_reason(report: dict[str, Any], name: str, verdict: str) -> str | None:
    """The reason of the first trial where property ``name`` had ``verdict``, on one line."""
    for trial in report.get("trials") or ():
        result = (trial.get("properties") or {}).get(name)
        if result and result.get("verdict") == verdict and result.get("reason"):
            reason = " ".join(str(result["reason"]).split())
            if len(reason) > REASON_WIDTH:
                reason = reason[:REASON_WIDTH - 1] + "…"
            return f"{reason} (trial {trial.get('trial')})"
    return None


_COLOURS = {"valid": "32", "invalid": "1;31", "unknown": "33", "skipped": "2"}


def paint(word: str, colour: bool, width: int = 0, tone: str | None = None) -> str:
    """``word`` padded to ``width``, in the ANSI colour of the verdict ``tone`` (the word
    itself by default) when ``colour``."""
    padded = f"{word:{width}}" if width else word
    code = _COLOURS.get(tone or word)
    return f"\x1b[{code}m{padded}\x1b[0m" if colour and code else padded


def verdict_table(report: dict[str, Any], colour: bool = False) -> str:
    """A short console table: one line per property (with the first reason of any that is
    not valid), then the verdict. ``colour``: ANSI colours for a terminal."""
    rows = [f"{'property':32} {'verdict':8} {'valid':>5} {'invalid':>7} {'unknown':>7}"]
    for name, p in report["properties"].items():
        rows.append(f"{name:32} {paint(p['verdict'], colour, 8)} {p['valid']:>5} "
                    f"{p['invalid']:>7} {p['unknown']:>7}")
        if p["verdict"] != "valid":  # why, on the console too: the first trial saying so
            why = _first_reason(report, name, p["verdict"])
            if why:
                rows.append(f"    why: {why}")
    spread = report["release_spread_ms"]
    if spread["median"] is not None:
        rows.append(f"release spread: median {spread['median']:.3f} ms, max {spread['max']:.3f} ms")
    arrival = report.get("server_arrival_spread_ms") or {}
    if arrival.get("median") is not None:
        rows.append(f"server arrival spread: median {arrival['median']:.3f} ms, "
                    f"max {arrival['max']:.3f} ms")
    failure = report.get("first_failure")
    if failure:
        for name, p in failure["properties"].items():
            rows.append(f"FAILED {name} (trial {failure['trial']}, seed {failure['seed']}): "
                        f"{p['reason']}")
    rows.append(f"verdict: {paint(report['verdict'], colour)}   reproduce: {report['reproduce']}")
    return "\n".join(rows)
