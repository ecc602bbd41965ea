"""``harness check`` and ``harness report``: the checkers re-run on a saved history, offline.

A history (``history.jsonl``, written by ``--report DIR``) holds every trial's ops, provider
ledger and database snapshots; each trial's scenario decides the properties it is judged on.
``check`` prints the verdict table (or report.json); ``report`` rewrites the report folder.
Both exit with the verdict's code, or 2 for a file that is not a readable history.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raceharness.core.checks.base import CheckResult
from raceharness.core.history import HistoryError, Trial, loads_trials
from raceharness.core.properties import SINGLE_CHAT_RACE, check_trial
from raceharness.core.report import build_report, rebuild_report, verdict_table
from raceharness.core.scenario import ScenarioError, catalogue
from raceharness.render import write_reports
from raceharness.runtime import EXIT_USAGE, use_colour


def check_history(path: Path, properties: Sequence[str] | None = None
                  ) -> tuple[dict[str, Any], list[Trial], list[dict[str, CheckResult]]]:
    """Re-run the checkers on a saved history; each trial's scenario decides its properties."""
    run_meta, trials = loads_trials(path.read_text(encoding="utf-8"))
    trials = [t for t in trials if not t.meta.get("skipped")]  # a skipped scenario's start
    known = catalogue()
    results = []
    for trial in trials:
        props: Sequence[str] = properties or (
            known[trial.meta["scenario"]].properties
            if trial.meta.get("scenario") in known else SINGLE_CHAT_RACE)
        lacks = trial.meta.get("not_checkable") or ()
        results.append(check_trial(trial, [p for p in props if p not in lacks]))
    return run_meta, trials, results


def _no_trials(path: Path) -> str:
    """Why a file gave no trials: empty, not JSON Lines at all, or a history with none."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    if not lines:
        return "the file is empty (a history.jsonl written by --report DIR has one JSON " \
               "object a line)"
    try:
        first = json.loads(lines[0])
    except ValueError:
        return "not a history: line 1 is not JSON (a history.jsonl written by --report DIR " \
               "has one JSON object a line)"
    if not isinstance(first, dict) or first.get("kind") != "run":
        return "not a history: line 1 is not its 'run' record"
    return "no trials in the history (the run stopped before its first trial began)"


def _load(command: str, path: Path
          ) -> tuple[dict[str, Any], list[Trial], list[dict[str, CheckResult]]] | None:
    """The history at ``path`` re-checked, or None once it said on stderr why it cannot be
    (no such file, unreadable, not a history, no trials)."""
    try:
        run_meta, trials, results = check_history(path)
    except FileNotFoundError:
        why = "no such file"
    except (OSError, UnicodeDecodeError) as exc:
        why = f"cannot read the history: {exc}"
    except HistoryError as exc:
        why = str(exc)
    else:
        if trials:
            return run_meta, trials, results
        why = _no_trials(path)
    print(f"harness {command}: {path}: {why}", file=sys.stderr)
    return None


def check_command(args: argparse.Namespace) -> int:
    """``harness check HISTORY``: the verdict table, or report.json with ``--json``."""
    path = Path(args.history)
    loaded = _load("check", path)
    if loaded is None:
        return EXIT_USAGE
    run_meta, trials, results = loaded
    report = build_report(trials, results, config=run_meta,
                          reproduce=f"harness check {path}")
    print(json.dumps(report, indent=2) if args.json else verdict_table(report, use_colour()))
    return int(report["exit_code"])


def report_command(args: argparse.Namespace) -> int:
    """``harness report DIR``: DIR's reports rewritten from DIR/history.jsonl."""
    folder = Path(args.dir)
    loaded = _load("report", folder / "history.jsonl")
    if loaded is None:
        return EXIT_USAGE
    run_meta, trials, results = loaded
    try:
        summaries = {name: s.summary for name, s in catalogue().items()}
    except ScenarioError:
        summaries = {}
    report = rebuild_report(run_meta, trials, results, summaries)
    try:
        write_reports(folder, report, trials)
    except OSError as exc:
        print(f"harness report: {folder}: cannot write the reports: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(verdict_table(report, use_colour()))
    return int(report["exit_code"])
