"""``report.html``: one self-contained page — verdict table, trials, a timeline per trial. Pure.

Self-contained means no request of any kind when opened: inline CSS, inline SVG, no script, no
font, image or link by URL; a Content-Security-Policy of ``default-src 'none'`` makes the
browser refuse any that slipped in. Drawn: the first :data:`FIRST_TRIALS` trials and every
invalid one, at most :data:`MAX_DRAWN` in all (the others are in the trials table). Every string
from the report or the history is escaped (:func:`.timeline_svg.esc`). A value the report does not
hold is shown as "—" (a racer without an answer, counted under the status ``"None"``, as "no
answer"), never as "None"; a property's offending ops follow its reason only when the reason
does not list them already.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raceharness.core.checks.turns import find_winner, turns
from raceharness.core.history import Trial
from raceharness.render.text import ms, ops_note, setting, verdict_word
from raceharness.render.timeline import build_timeline
from raceharness.render.timeline_svg import STATUS_COLOURS, esc, render_svg

FIRST_TRIALS = 20
MAX_DRAWN = 100
MAX_TABLE_ROWS = 1000
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#212121}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f5f5f5;padding:8px 10px;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}td.n{text-align:right}th{background:#fafafa}
.valid{color:#2e7d32}.invalid{color:#c62828;font-weight:600}.unknown{color:#8d6e00}
.skipped{color:#666}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.badge.valid{background:#2e7d32;color:#fff}.badge.invalid{background:#c62828;color:#fff}
.badge.unknown{background:#8d6e00;color:#fff}
details{border:1px solid #ddd;border-radius:4px;margin:10px 0;padding:4px 10px}
summary{cursor:pointer;font-weight:600;padding:4px 0}ul.props{margin:4px 0 8px;padding-left:20px}
.muted{color:#666}svg{display:block;margin:6px 0;font-family:ui-monospace,Menlo,monospace}
svg.timeline{max-width:100%;height:auto}
svg .label{font-size:11px;text-anchor:end;fill:#333}svg .tick{font-size:10px;
text-anchor:middle;fill:#555}svg .unit{font-size:10px;fill:#555}svg .grid{stroke:#e0e0e0}
svg .release{stroke:#212121;stroke-width:1.5}svg .stop{stroke:#c62828;stroke-width:1.5;
stroke-dasharray:5 3}svg .life{stroke:#9e9e9e;stroke-width:1.5}svg .sent{stroke:#212121;
stroke-width:1.5}svg .frame{fill:#fff;stroke-width:1.5}svg .end{fill:#424242}
svg .call rect,svg .call circle{fill:#7b1fa2}svg .calls{font-size:10px;fill:#7b1fa2}
svg .call .disconnect{stroke:#c62828;stroke-width:2}svg .call .complete{stroke:#7b1fa2;
stroke-width:2}svg .compressed{fill:#9e9e9e;fill-opacity:.12}svg .break rect{fill:#fff}
svg .break path{stroke:#555;stroke-width:1.5;fill:none}
"""


def _statuses(statuses: Any) -> str:
    """``{"200": 1, "409": 2, "None": 1}`` as "200×1, 409×2, no answer×1"."""
    if not isinstance(statuses, dict):
        return ""
    return ", ".join(f"{'no answer' if k in (None, 'None') else k}×{v}"
                     for k, v in statuses.items())


def _reproduce(line: Any) -> str:
    return f"<pre>{esc(line)}</pre>" if line else ""


def _verdict(value: Any) -> str:
    word = str(value) if value in ("valid", "invalid", "unknown", "skipped") else "unknown"
    return f'<span class="{word}">{esc(value)}</span>'


def _property_table(report: Mapping[str, Any]) -> str:
    rows = ["<table><tr><th>property</th><th>verdict</th><th>valid</th><th>invalid</th>"
            "<th>unknown</th></tr>"]
    for name, p in (report.get("properties") or {}).items():
        rows.append(f"<tr><td><code>{esc(name)}</code></td><td>{_verdict(p.get('verdict'))}"
                    f"</td><td class=n>{esc(p.get('valid'))}</td><td class=n>"
                    f"{esc(p.get('invalid'))}</td><td class=n>{esc(p.get('unknown'))}</td></tr>")
    return "".join(rows) + "</table>"


def _scenario_table(report: Mapping[str, Any]) -> str:
    scenarios = report.get("scenarios") or {}
    if not scenarios:
        return ""
    rows = ["<h2>Scenarios</h2><table><tr><th>scenario</th><th>verdict</th><th>trials</th>"
            "<th>note</th></tr>"]
    for name, info in scenarios.items():
        note = info.get("skipped") or info.get("summary") or ""
        rows.append(f"<tr><td><code>{esc(name)}</code></td><td>{_verdict(info.get('verdict'))}"
                    f"</td><td class=n>{esc(info.get('trials'))}</td><td>{esc(note)}</td></tr>")
    return "".join(rows) + "</table>"


def _not_checkable(report: Mapping[str, Any]) -> str:
    """The properties the target's adapter gives no evidence for, with why (not checked)."""
    lacks = report.get("not_checkable") or {}
    if not lacks:
        return ""
    adapter = (report.get("adapter") or {}).get("name", "?")
    rows = [f"<h2>Not checkable through adapter {esc(adapter)}</h2><table><tr><th>property"
            "</th><th>why</th></tr>"]
    rows += [f"<tr><td><code>{esc(prop)}</code></td><td>{esc(why)}</td></tr>"
             for prop, why in lacks.items()]
    return "".join(rows) + "</table>"


def _trials_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    rows = ["<table><tr><th>trial</th><th>seed</th><th>verdict</th><th>statuses</th>"
            "<th>winners</th><th>release spread</th><th>arrival spread</th>"
            "<th>not valid</th></tr>"]
    for s in summaries[:MAX_TABLE_ROWS]:
        statuses = _statuses(s.get("statuses"))
        bad = ", ".join(f"{name} ({p.get('verdict')})"
                        for name, p in (s.get("properties") or {}).items()
                        if p.get("verdict") != "valid")
        rows.append(f"<tr><td class=n>{esc(s.get('trial'))}</td><td>{esc(s.get('seed'))}</td>"
                    f"<td>{_verdict(s.get('verdict'))}</td><td>{esc(statuses)}</td>"
                    f"<td class=n>{esc(s.get('winners'))}</td><td class=n>"
                    f"{esc(ms(s.get('release_spread_ms')))}</td><td class=n>"
                    f"{esc(ms(s.get('server_arrival_spread_ms')))}</td><td>{esc(bad)}</td></tr>")
    more = len(summaries) - MAX_TABLE_ROWS
    tail = f'<p class="muted">{more} more trials in report.json.</p>' if more > 0 else ""
    return "".join(rows) + "</table>" + tail


def _legend() -> str:
    dot = '<circle cx="{x5}" cy="10" r="4.5" fill="{c}"/>'
    items = [*((dot.replace("{c}", STATUS_COLOURS[cls]), text) for cls, text in (
        ("s200", "200"), ("s409", "409"), ("s5xx", "5xx"), ("sother", "other status"),
        ("none", "no answer"))),
        ('<line class="sent" x1="{x5}" y1="5" x2="{x5}" y2="15"/>', "last byte sent"),
        ('<polygon class="frame" stroke="#333" points="{x5},6 {x9},10 {x5},14 {x1},10"/>',
         "first frame"),
        ('<rect class="end" x="{x3}" y="5" width="3" height="10"/>', "stream end"),
        ('<g class="call"><rect x="{x0}" y="8" width="12" height="3"/></g>', "provider call"),
        ('<line class="stop" x1="{x5}" y1="2" x2="{x5}" y2="18"/>', "/stop"),
        ('<line class="release" x1="{x5}" y1="2" x2="{x5}" y2="18"/>', "release")]
    parts, x = [], 4
    for shape, text in items:
        for k in (9, 5, 3, 1, 0):
            shape = shape.replace(f"{{x{k}}}", str(x + k))
        parts.append(f'{shape}<text x="{x + 16}" y="14">{text}</text>')
        x += 30 + round(6.7 * len(text))
    return (f'<svg class="legend" width="{x}" height="20" role="img" aria-label="legend"'
            f' style="font-size:11px">{"".join(parts)}</svg>')


def _winner(trial: Trial) -> int | None:
    """The op index of the single-chat race's winner (None when the racers raced on several
    chats, where every 200 is a winner, or when an op is malformed)."""
    try:
        racers = turns(trial, "racer")
        if len({repr(r.chat_id) for r in racers}) != 1:
            return None
        winner = find_winner(racers)
    except (TypeError, ValueError):
        return None
    return None if winner is None else winner.index


def _trial_section(report: Mapping[str, Any], s: Mapping[str, Any], trial: Trial | None,
                   is_open: bool) -> str:
    props = s.get("properties") or {}
    verdict = s.get("verdict")
    items = []
    for name, p in props.items():
        if p.get("verdict") != "valid":
            note = ops_note(p.get("reason"), p.get("ops"))
            items.append(f"<li>{_verdict(p.get('verdict'))} <code>{esc(name)}</code>: "
                         f"{esc(p.get('reason'))}"
                         + (f" <span class=muted>({esc(note)})</span>" if note else "") + "</li>")
    valid = [name for name, p in props.items() if p.get("verdict") == "valid"]
    if valid:
        items.append(f"<li>{_verdict('valid')}: {esc(', '.join(valid))}</li>")
    offending = [i for p in props.values() if p.get("verdict") == "invalid"
                 for i in p.get("ops") or () if isinstance(i, int)]
    if trial is None or not trial.ops:
        drawing = '<p class="muted">No operations recorded for this trial.</p>'
    else:
        timeline = build_timeline(trial, offending, winner=_winner(trial))
        hidden = (f'<p class="muted">{timeline.hidden} racer lanes not drawn (neither offending '
                  "nor the winner).</p>") if timeline.hidden else ""
        drawing = f'<div id="timeline-{esc(s.get("trial"))}">{render_svg(timeline)}</div>{hidden}'
    statuses = _statuses(s.get("statuses"))
    scenario = f" · {esc(s['scenario'])}" if s.get("scenario") else ""
    return (f'<details id="trial-{esc(s.get("trial"))}"{" open" if is_open else ""}>'
            f'<summary>Trial {esc(s.get("trial"))}{scenario}'
            f" · {_verdict(verdict)} · seed {esc(s.get('seed'))}</summary>"
            f"<p>Statuses {esc(statuses or 'none')}; winners {esc(s.get('winners'))}; release "
            f"spread {esc(ms(s.get('release_spread_ms')))}; server arrival spread "
            f"{esc(ms(s.get('server_arrival_spread_ms')))}.</p>"
            f'<ul class="props">{"".join(items)}</ul>'
            f"{_reproduce(s.get('reproduce') or report.get('reproduce'))}{drawing}</details>")


def _drawn(summaries: Sequence[Mapping[str, Any]]) -> list[int]:
    chosen = [k for k, s in enumerate(summaries)
              if k < FIRST_TRIALS or s.get("verdict") == "invalid"]
    return chosen[:MAX_DRAWN]


def render_html(report: Mapping[str, Any], trials: Sequence[Trial]) -> str:
    """The page. ``trials`` are the histories behind ``report["trials"]`` (matched by trial
    number, else by position); a summary without its history is shown without a timeline."""
    summaries = list(report.get("trials") or ())
    by_number = {t.meta.get("trial"): t for t in trials}
    verdict = report.get("verdict")
    config = report.get("config") or {}
    faults = ", ".join(map(str, config.get("faults") or ())) or "none"
    spread, arrival = report.get("release_spread_ms") or {}, report.get("server_arrival_spread_ms")
    arrival_line = "" if not arrival or arrival.get("median") is None else (
        f"; server arrival spread median {esc(ms(arrival.get('median')))}, "
        f"max {esc(ms(arrival.get('max')))}")
    drawn = _drawn(summaries)
    sections = []
    for k in drawn:
        s = summaries[k]
        trial = by_number.get(s.get("trial"), trials[k] if k < len(trials) else None)
        sections.append(_trial_section(report, s, trial, is_open=k == drawn[0]
                                       or s.get("verdict") == "invalid"))
    undrawn = len(summaries) - len(drawn)
    word = verdict_word(verdict)
    klass = str(verdict) if verdict in ("valid", "invalid", "unknown") else "unknown"
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>raceharness: {word}</title><style>{STYLE}</style></head><body>",
        f'<h1>raceharness <span class="badge {klass}">{word}</span></h1>',
        f"<p>Verdict {_verdict(verdict)}, exit code {esc(report.get('exit_code'))}. "
        f"Target {esc(setting(config, 'target'))}; n {esc(setting(config, 'n'))}; trials "
        f"{esc(setting(config, 'trials'))}; sync {esc(setting(config, 'sync'))}; "
        f"faults {esc(faults)}.</p>",
        f"<p>Release spread median {esc(ms(spread.get('median')))}, max "
        f"{esc(ms(spread.get('max')))}{arrival_line}.</p>",
        _reproduce(report.get("reproduce")),
        "<h2>Properties</h2>", _property_table(report), _scenario_table(report),
        _not_checkable(report),
        "<h2>Trials</h2>", _trials_table(summaries),
        "<h2>Timelines</h2>", _legend(),
        '<p class="muted">Times in ms from the release (the last bytes sent). The racers\' span '
        "gets most of the width; what comes before and after it is drawn compressed (shaded, "
        "with a break on the axis) when it would take more. Hover a mark or a lane label for "
        "the op's details; red lanes are cited by an invalid property.</p>",
        *sections,
        f'<p class="muted">{undrawn} trials not drawn (only the first {FIRST_TRIALS} and the '
        f"invalid ones, at most {MAX_DRAWN}).</p>" if undrawn > 0 else "",
        "</body></html>\n"])
