"""``harness conformance --faults``: the fault matrix.

The suite runs against the correct embedded reference (every property must be valid), then,
for each fault of conformance.md §4, the scenarios that must catch it run against the
reference with that fault switched on. The result is a fault × property matrix; a fault is
*caught* when at least one of the properties expected to catch it is invalid (any invalid
property counts as detection, and the matrix shows which did). A fault not caught is a hole in
the harness: the command exits 1.

``matrix.json`` (``raceharness/matrix/v1``) says where it came from in ``provenance``
(:mod:`raceharness.shell.provenance`: commit, date, each row's seed, machine), and
``matrix.md`` repeats it in one line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from raceharness.core.report import paint
from raceharness.core.scenario import catalogue
from raceharness.runtime import UsageError, use_colour
from raceharness.shell.provenance import build_provenance, provenance_markdown
from raceharness.trial.suite import RaceOptions, run_scenarios

# conformance.md §4: fault -> (the scenarios that catch it, the properties expected to).
# The gate faults need the race to land on the gate (an interleaving the harness makes likely,
# not certain): their rows run --fault-trials trials. The others are deterministic: one trial.
RACY = frozenset({"swallow-unique-violation", "no-unique-index", "blanket-500",
                  "provider-before-gate", "persist-before-gate", "claim-held-open"})
FAULT_CATCHERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "swallow-unique-violation": (("same-chat-burst",),
                                 ("race/losers-409", "race/no-untracked-run")),
    "no-unique-index": (("same-chat-burst",), ("race/one-winner",)),
    "blanket-500": (("same-chat-burst",), ("race/losers-409",)),
    "provider-before-gate": (("same-chat-burst",), ("race/no-loser-provider-call",)),
    "persist-before-gate": (("same-chat-burst",), ("race/no-loser-writes",)),
    "claim-held-open": (("same-chat-burst",), ("race/losers-fast",)),
    "untracked-on-begin-failure": (("db-outage", "db-outage-mid-race"),
                                   ("outage/fails-closed",)),
    "leak-on-provider-error": (("provider-error",), ("race/released", "run/expected-end")),
    "stop-ignores-provider": (("same-chat-burst",), ("race/winner-stoppable",)),
    "ignore-disconnect": (("disconnect-abort",), ("run/expected-end", "race/released")),
    "no-lease": (("crash-recovery",), ("recovery/lease-reclaims", "race/released")),
    "late-write-overwrites": (("stale-stop",), ("stop/stale-ignored",)),
    "lease-too-short": (("long-hold",), ("race/one-winner", "race/no-untracked-run")),
    "stop-local-only": (("multi-instance",), ("race/winner-stoppable",)),
}


def parse_faults_arg(value: str) -> list[str]:
    if value == "all":
        return list(FAULT_CATCHERS)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FAULT_CATCHERS]
    if unknown or not names:
        raise UsageError(f"--faults: unknown fault {', '.join(map(repr, unknown)) or repr(value)};"
                         f" use all or a comma-separated list of {', '.join(FAULT_CATCHERS)}")
    return names


async def run_matrix(opts: RaceOptions, faults: list[str], fault_trials: int,
                     out_dir: Path | None, as_json: bool) -> int:
    if opts.target is not None:
        raise UsageError("--faults needs the embedded reference (no --target)")
    scenarios = catalogue()
    started = build_provenance({})  # the code and the date at the start of the run
    correct = await run_scenarios(replace(opts, faults=()), list(scenarios.values()))
    rows: dict[str, dict[str, Any]] = {"(correct)": _row(correct.report, ())}
    seeds = {"(correct)": correct.report["config"].get("seed")}
    for fault in faults:
        names, expected = FAULT_CATCHERS[fault]
        trials = fault_trials if fault in RACY else 1
        outcome = await run_scenarios(replace(opts, faults=(fault,), trials=trials),
                                      [scenarios[n] for n in names])
        rows[fault] = _row(outcome.report, expected)
        seeds[fault] = outcome.report["config"].get("seed")
    matrix = build_matrix(rows, faults, {**started, "seeds": seeds})
    text = render_matrix_markdown(matrix)
    if out_dir is not None:
        write_matrix(out_dir, matrix, text)
    if as_json:
        print(json.dumps(matrix, indent=2), file=sys.stdout)
    else:
        print(render_matrix_console(matrix, use_colour()), file=sys.stdout)
        if out_dir is not None:
            print(f"the full fault x property table: {out_dir / 'matrix.md'}")
    return 0 if matrix["ok"] else 1


def build_matrix(rows: dict[str, dict[str, Any]], faults: list[str],
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """``matrix.json``: the rows, whether every fault was caught on a clean reference, the
    properties expected to catch each fault, and where the result came from."""
    return {"schema": "raceharness/matrix/v1", "rows": rows, "ok": _ok(rows),
            "expected": {f: list(FAULT_CATCHERS[f][1]) for f in faults},
            "provenance": provenance}


def render_matrix_console(matrix: dict[str, Any], colour: bool = False) -> str:
    """The matrix as a compact grid for a terminal: one line per row and what caught the
    fault, with its invalid trials (the full fault x property table is matrix.md)."""
    rows = matrix["rows"]
    width = max(len(name) for name in rows) + 2

    def mark(text: str, good: bool) -> str:
        return paint(text, colour, 8, tone="valid" if good else "invalid")

    lines = [f"{'fault':{width}}{'caught':8}by (invalid trials / trials)"]
    for name, row in rows.items():
        if name == "(correct)":
            bad = sorted(p for p, v in row["properties"].items() if v != "valid")
            lines.append(f"{name:{width}}{mark('clean' if not bad else 'NOT CLEAN', not bad)}"
                         + ", ".join(f"{p} {row['properties'][p]}" for p in bad))
            continue
        by = ", ".join(f"{p.split('/', 1)[-1]} {row['counts'][p]['invalid']}/"
                       f"{sum(row['counts'][p].values())}" for p in row["caught_by"])
        lines.append(f"{name:{width}}{mark('yes' if row['caught'] else 'NO', row['caught'])}"
                     f"{by or '-'}")
    skipped = sum(len(row["skipped"]) for row in rows.values())
    if skipped:
        lines.append(f"{skipped} scenario run(s) skipped: see matrix.md")
    lines.append("result: " + ("every fault caught, the correct reference clean" if matrix["ok"]
                               else "NOT OK: a fault not caught or the reference not clean"))
    return "\n".join(lines)


def write_matrix(out_dir: Path, matrix: dict[str, Any], text: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(matrix, indent=2) + "\n")
    (out_dir / "matrix.md").write_text(text)


def _row(report: dict[str, Any], expected: tuple[str, ...]) -> dict[str, Any]:
    props = {name: p["verdict"] for name, p in report["properties"].items()}
    counts = {name: {k: p[k] for k in ("valid", "invalid", "unknown")}
              for name, p in report["properties"].items()}
    skipped = {name: s["skipped"] for name, s in report["scenarios"].items() if s["skipped"]}
    caught_by = sorted(name for name, v in props.items() if v == "invalid")
    return {"properties": props, "counts": counts, "trials": len(report["trials"]),
            "skipped": skipped, "caught_by": caught_by,
            "caught": bool(set(caught_by) & set(expected)) if expected else None,
            "verdict": report["verdict"]}


def _ok(rows: dict[str, dict[str, Any]]) -> bool:
    correct = rows["(correct)"]
    clean = all(v == "valid" for v in correct["properties"].values())
    return clean and all(row["caught"] for name, row in rows.items() if name != "(correct)")


def _cell(row: dict[str, Any], prop: str, mark: dict[str, str]) -> str:
    verdict = row["properties"].get(prop)
    if verdict is None:
        return ""
    count = row["counts"][prop]
    if verdict == "invalid":
        return f"CAUGHT {count['invalid']}/{sum(count.values())}"
    return mark[verdict]


def render_matrix_markdown(matrix: dict[str, Any]) -> str:
    rows = matrix["rows"]
    props = sorted({p for row in rows.values() for p in row["properties"]})
    mark = {"valid": "ok", "invalid": "CAUGHT", "unknown": "?"}
    lines = ["# Fault matrix", "",
             "Each row: the suite (correct reference) or a fault's catching scenarios "
             "(faulty reference). `CAUGHT` = the property was invalid; `ok` = valid; "
             "`?` = unknown; blank = not checked in that row.", "",
             "| fault | caught | " + " | ".join(f"`{p}`" for p in props) + " |",
             "|---|---|" + "---|" * len(props)]
    for name, row in rows.items():
        caught = ("clean" if all(v == "valid" for v in row["properties"].values())
                  else "NOT CLEAN") if name == "(correct)" else (
            "yes" if row["caught"] else "**NO**")
        cells = [_cell(row, p, mark) for p in props]
        lines.append(f"| {name} | {caught} | " + " | ".join(cells) + " |")
    skipped = {f"{name}: {scenario}": reason for name, row in rows.items()
               for scenario, reason in row["skipped"].items()}
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {k} — {v}" for k, v in skipped.items()]
    result = ("every fault caught, the correct reference clean" if matrix["ok"]
              else "NOT OK: see the rows above")
    lines += ["", f"Result: {result}", ""]
    provenance = provenance_markdown(matrix.get("provenance"))
    if provenance:
        lines += [provenance, ""]
    return "\n".join(lines)
