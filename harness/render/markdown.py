"""``summary.md``: the verdict for a CI step summary (GitHub caps those at 1 MiB). Pure.

A status word headline (PASSED / FAILED / INCONCLUSIVE, no emoji), the property table, the
release and server-arrival spreads, the first failing trial with its failing properties and its
reproduce line, a capped list of the other failing trials, the configuration line, and the
run's reproduce line — left out after a failure when it is the first failing trial's line, so
one command is never shown twice. A failing property's offending ops are added after its reason
only when the reason does not list them already (:func:`.text.ops_note`).

Markdown renders inline HTML, images and (on GitHub) math, so every string from the report is
escaped: ``&``, ``<`` and ``>`` become entities (no tag can start), the punctuation that can
open a link, image, code span, table cell, strike or formula is backslash-escaped, line breaks
become spaces (no string starts a line, so block syntax cannot arise), and reproduce lines go
in a fence longer than any backtick run they hold. Lists and reasons are capped, and the whole
text is cut at :data:`MAX_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from raceharness.render.text import clean, ms, one_line, ops_note, setting, verdict_word

MAX_BYTES = 256 * 1024
REASON_LIMIT = 400        # characters of a reason
LISTED_FAILURES = 10      # failing trials listed after the first
# what can open a tag, entity, link, image, code span, table cell, strike or formula; "_" is
# left alone (intraword it emphasises nothing, and codes like A_RUN_ALREADY_ACTIVE are common)
_SPECIAL = re.compile(r"([\\`*\[\]!|~$])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md(value: Any, limit: int | None = REASON_LIMIT) -> str:
    """Inline text, escaped so it renders as itself and starts no HTML, link or image."""
    escaped = _SPECIAL.sub(r"\\\1", one_line(value, limit))
    return re.sub("[&<>]", lambda m: _ENTITIES[m.group()], escaped)


def fenced(text: str, info: str = "sh") -> str:
    """A fenced code block whose fence no backtick run inside can close."""
    body = clean(text)
    runs = [len(r) for r in re.findall(r"`+", body)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def _property_table(report: Mapping[str, Any]) -> list[str]:
    rows = ["| property | verdict | valid | invalid | unknown |", "|---|---|--:|--:|--:|"]
    for name, p in (report.get("properties") or {}).items():
        verdict = md(p.get("verdict"))
        shown = f"**{verdict}**" if p.get("verdict") == "invalid" else verdict
        rows.append(f"| {md(name)} | {shown} | {md(p.get('valid'))} | {md(p.get('invalid'))} "
                    f"| {md(p.get('unknown'))} |")
    return rows


def _scenario_table(report: Mapping[str, Any]) -> list[str]:
    scenarios = report.get("scenarios") or {}
    if len(scenarios) < 2 and not any(i.get("skipped") for i in scenarios.values()):
        return []  # one scenario that ran: the property table says it all
    rows = ["", "| scenario | verdict | trials | note |", "|---|---|--:|---|"]
    for name, info in scenarios.items():
        verdict = md(info.get("verdict"))
        shown = f"**{verdict}**" if info.get("verdict") == "invalid" else verdict
        note = info.get("skipped") or info.get("summary") or ""
        rows.append(f"| {md(name)} | {shown} | {md(info.get('trials'))} | {md(note)} |")
    return rows


def _not_tested(report: Mapping[str, Any]) -> list[str]:
    """Every skipped scenario with its reason: what was not tested is not passed."""
    skipped = {name: info.get("skipped") for name, info in (report.get("scenarios") or {}).items()
               if info.get("skipped")}
    if not skipped:
        return []
    strict = "" if report.get("strict") else " (`--strict` makes a skip inconclusive)"
    lines = ["", f"**Not tested** ({len(skipped)} scenario{'s' if len(skipped) != 1 else ''} "
             f"skipped){strict}:", ""]
    lines += [f"- {md(name)}: {md(reason)}" for name, reason in skipped.items()]
    return lines


def _not_checkable(report: Mapping[str, Any]) -> list[str]:
    """Every property the target's adapter gives no evidence for, with why."""
    lacks = report.get("not_checkable") or {}
    if not lacks:
        return []
    adapter = (report.get("adapter") or {}).get("name", "?")
    strict = "" if report.get("strict") else " (`--strict` makes this inconclusive)"
    lines = ["", f"**Not checkable through adapter {md(adapter)}** ({len(lacks)} "
             f"propert{'y' if len(lacks) == 1 else 'ies'}){strict}:", ""]
    lines += [f"- {md(prop)}: {md(why)}" for prop, why in lacks.items()]
    return lines


def _spreads(report: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, what in (("release_spread_ms", "Release spread (last bytes sent)"),
                      ("server_arrival_spread_ms", "Server arrival spread")):
        spread = report.get(key) or {}
        if spread.get("median") is not None:
            lines.append(f"{what}: median {md(ms(spread.get('median')))}, "
                         f"max {md(ms(spread.get('max')))}.")
    if not lines:
        lines.append("Release spread: not measured.")
    return lines


def _trial_counts(trials: list[Mapping[str, Any]]) -> str:
    counts = {"valid": 0, "invalid": 0, "unknown": 0}
    for t in trials:
        verdict = str(t.get("verdict"))
        counts[verdict if verdict in counts else "unknown"] += 1
    return (f"{len(trials)} trial{'s' if len(trials) != 1 else ''}: {counts['valid']} valid, "
            f"{counts['invalid']} invalid, {counts['unknown']} inconclusive.")


def _first_failure(report: Mapping[str, Any], failing: list[Mapping[str, Any]]) -> list[str]:
    first = failing[0]
    lines = ["", f"### First failing trial: trial {md(first.get('trial'))} "
             f"(seed {md(first.get('seed'))})", ""]
    for name, p in (first.get("properties") or {}).items():
        if p.get("verdict") == "invalid":
            note = ops_note(p.get("reason"), p.get("ops"))
            lines.append(f"- **{md(name)}**: {md(p.get('reason'))}"
                         + (f" ({md(note)})" if note else ""))
    lines += ["", "Reproduce:", "", fenced(_first_reproduce(report, failing))]
    rest = failing[1:]
    if rest:
        shown = ", ".join(f"{md(t.get('trial'))} (seed {md(t.get('seed'))})"
                          for t in rest[:LISTED_FAILURES])
        more = f", and {len(rest) - LISTED_FAILURES} more" if len(rest) > LISTED_FAILURES else ""
        lines += ["", f"Other failing trials: {shown}{more}."]
    return lines


def _first_reproduce(report: Mapping[str, Any], failing: list[Mapping[str, Any]]) -> str:
    return str(failing[0].get("reproduce") or report.get("reproduce") or "")


def _config_line(report: Mapping[str, Any]) -> str:
    config = report.get("config") or {}
    faults = ", ".join(map(str, config.get("faults") or ())) or "none"
    parts = [f"{key} {setting(config, key)}" for key in ("target", "n", "trials", "seed", "sync")]
    parts.append(f"faults {faults}")
    for key, what in (("provider_access", "provider access"), ("db_access", "database access")):
        if key in config:
            parts.append(f"{what} {'yes' if config[key] else 'no'}")
    return "Config: " + md("; ".join(parts), None) + "."


def render_markdown(report: Mapping[str, Any]) -> str:
    """The summary; always under :data:`MAX_BYTES` of UTF-8."""
    verdict = report.get("verdict")
    trials = list(report.get("trials") or ())
    failing = [t for t in trials if t.get("verdict") == "invalid"]
    lines = [f"## raceharness: {verdict_word(verdict)}", "",
             f"Verdict **{md(verdict)}** (exit code {md(report.get('exit_code'))}). "
             f"{md(_trial_counts(trials))}", "", *_property_table(report),
             *_scenario_table(report), *_not_tested(report), *_not_checkable(report), "",
             *_spreads(report)]
    if failing:
        lines += _first_failure(report, failing)
    lines += ["", _config_line(report)]
    run_line = str(report.get("reproduce") or "")
    if run_line and not (failing and run_line == _first_reproduce(report, failing)):
        lines += ["", "Reproduce the run:", "", fenced(run_line)]
    text = "\n".join(lines) + "\n"
    return _capped(text)


def _capped(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= MAX_BYTES:
        return text
    note = "\n\n(summary cut at the size limit; report.json and report.html hold it all)\n"
    cut = data[:MAX_BYTES - len(note.encode())].decode("utf-8", errors="ignore")
    return cut + note
