"""``harness bench``'s results (JSON + Markdown): ``bench.json`` and ``bench.md`` written
side by side, the Markdown tables with the bars beside the figures, where the figures came from
(``provenance``, one line under the machine), and the sections of an earlier run kept when only
some are rerun (``--sections``), each with when it was measured and its own provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raceharness.bench.plan import BARS, BENCH_SCHEMA, SECTIONS
from raceharness.core.stats import wilson_interval
from raceharness.shell.provenance import provenance_markdown


def previous_results(out: Path, result: dict[str, Any]) -> dict[str, Any] | None:
    """The results already in ``out`` when they come from this machine and this format (their
    other sections are kept beside the ones rerun), else None."""
    try:
        previous = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = ("cores", "cpu_model", "python")
    if not isinstance(previous, dict) or previous.get("schema") != BENCH_SCHEMA or any(
            (previous.get("machine") or {}).get(k) != result["machine"].get(k) for k in same):
        return None
    return previous


def merge_sections(result: dict[str, Any], previous: dict[str, Any]) -> None:
    """Keep ``previous``'s sections that were not rerun, each marked with when it ran."""
    for name, section in (previous.get("sections") or {}).items():
        if name in SECTIONS and name not in result["sections"]:
            section.setdefault("measured", previous.get("started"))
            if previous.get("provenance") is not None:
                section.setdefault("provenance", previous["provenance"])
            result["sections"][name] = section


def write_results(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(render_markdown(result) + "\n", encoding="utf-8")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return text + unit


def _bar(value: float | None, bar: float, *, higher_is_better: bool = False) -> str:
    if value is None:
        return "–"
    ok = value >= bar if higher_is_better else value <= bar
    return ("meets" if ok else "misses") + f" ({'≥' if higher_is_better else '≤'} {bar:g})"


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# harness bench", "",
             f"Machine: {m.get('cores')} cores, {m.get('cpu_model') or 'unknown CPU'}, "
             f"Python {m.get('python')}, Postgres {m.get('postgres') or '?'}, "
             f"{m.get('platform')}. Seed {result['seed']}"
             f"{' (--quick)' if result.get('quick') else ''}."
             + (" **Interrupted: partial figures.**" if result.get("interrupted") else ""), ""]
    provenance = provenance_markdown(result.get("provenance"))
    if provenance:
        lines += [provenance, ""]
    kept = {name: section["provenance"] for name, section in result["sections"].items()
            if isinstance(section, dict) and section.get("provenance") is not None
            and section["provenance"] != result.get("provenance")}
    for name, earlier in kept.items():
        lines += [f"Section {name} kept from an earlier run: "
                  + provenance_markdown(earlier).removeprefix("Provenance: "), ""]
    s = result["sections"]
    if "sync" in s:
        lines += ["## Synchronisation (medians over trials; ratio to naive on the same server)",
                  "", "| server | sync | N | trials | release spread ms | × naive "
                  "| server arrival spread ms | × naive | verdicts |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in s["sync"]["rows"]:
            rel, arr = r["release_spread_ms"], r["arrival_spread_ms"]
            v = r["verdicts"]
            lines.append(f"| {r['server']} | {r['sync']} | {r['n']} | {r['trials']} | "
                         f"{_fmt(rel['median'])} | {_fmt(rel.get('ratio_to_naive'))} | "
                         f"{_fmt(arr['median'])} | {_fmt(arr.get('ratio_to_naive'))} | "
                         f"{v['valid']} valid, {v['invalid']} invalid, {v['unknown']} unknown |")
        notes = sorted({n for r in s["sync"]["rows"] for n in r.get("notes", [])})
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    if "detection" in s:
        lines += ["## Detection power (`no-unique-index`, single `harness race` trials)", "",
                  "| server | sync | N | caught / trials | rate | 95% lower bound "
                  "| trials for 95% (point / conservative) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in s["detection"]["rows"]:
            lines.append(f"| {r['server']} | {r['sync']} | {r['n']} | {r['caught']} / "
                         f"{r['trials']} | {_fmt(r['catch_rate'])} | "
                         f"{_fmt(r['catch_rate_wilson95_lower'])} | "
                         f"{_fmt(r['trials_for_95'])} / "
                         f"{_fmt(r['trials_for_95_conservative'])} |")
        lines.append("")
    if "service" in s:
        sv = s["service"]
        lines += [f"## Service (reference, N={sv['n']} bursts × {sv['trials']})", "",
                  "| figure | p50 | p99 |", "|---|---:|---:|",
                  f"| 409 latency, client ms | {_fmt(sv['latency_409_ms']['p50'])} | "
                  f"{_fmt(sv['latency_409_ms']['p99'])} |",
                  f"| 409 time in the server ms | {_fmt(sv['server_409_ms']['p50'])} | "
                  f"{_fmt(sv['server_409_ms']['p99'])} |",
                  f"| winner time to first frame ms | {_fmt(sv['winner_ttff_ms']['median'])} | "
                  f"{_fmt(sv['winner_ttff_ms']['p99'])} |", "",
                  f"Rejections per second (median over bursts): "
                  f"{_fmt(sv['rejections_per_s']['median'])}.", ""]
        cpu = sv.get("cpu_per_loser_ms")
        if cpu:
            parts = ", ".join(f"{g} {_fmt(cpu[g])}" for g in ("reference", "postgres", "harness")
                              if cpu.get(g) is not None)
            lines += [f"CPU per loser (the N={sv['n']} trials minus as many one-turn trials, "
                      f"per extra turn): {parts}; total {_fmt(cpu['total'], ' ms')}. The "
                      f"reference answers on one event loop per instance "
                      f"({cpu['instances']} here); the losers hold it "
                      f"{_fmt(cpu['reference_loop_ms_per_burst'], ' ms')} per burst, part of "
                      f"that before the release (accepting, parsing headers) and after the "
                      f"409s (closing). The last of the {sv['n'] - 1} 409s reached the harness "
                      f"{_fmt((sv.get('last_409_ms') or {}).get('median'), ' ms')} after the "
                      f"release (median).", ""]
    if "wall" in s:
        w = s["wall"]
        lines += [f"## Wall time (`harness race --n {w.get('n', 50)}`, fresh process each)", "",
                  f"Cold end to end: median {_fmt(w['cold_s']['median'], ' s')} over "
                  f"{w['runs']} run(s); race phase (the trial): "
                  f"{_fmt(w['race_phase_s']['median'], ' s')} "
                  f"({_fmt(w['race_phase_share_of_cold'])} of cold); the burst itself "
                  f"(release → last answer): {_fmt(w['burst_s']['median'], ' s')}.", ""]
    if "scale" in s:
        sc = s["scale"]
        same, syn = sc.get("same_chat", {}), sc.get("synthetic", {})
        many = sc.get("many_chats", {})
        med = lambda d: (d or {}).get("median")  # noqa: E731
        lines += ["## Scale (medians over the trials)", "",
                  f"- Same-chat burst N={same.get('n')} × {same.get('trials')}: "
                  f"{_fmt(med(same.get('wall_s')), ' s')} per trial, every property evaluated: "
                  f"{same.get('all_evaluated')} (invalid: "
                  f"{', '.join(same.get('invalid') or []) or 'none'}); release spread "
                  f"{_fmt(med(same.get('release_spread_ms')), ' ms')}, server arrival spread "
                  f"{_fmt(med(same.get('arrival_spread_ms')), ' ms')}; checkers "
                  f"{_fmt(med(same.get('checker_s')), ' s')} on {same.get('ops')} ops.",
                  (f"- {many['chats']} chats × {many['per_chat']} turns × {many['trials']}: "
                   f"{_fmt(med(many.get('wall_s')), ' s')} per trial, every property evaluated: "
                   f"{many.get('all_evaluated')}." if "chats" in many
                   else f"- Many chats: {many.get('skipped', 'not run')}"),
                  f"- Synthetic history of {syn.get('ops')} ops: checkers "
                  f"{_fmt(med(syn.get('checker_s')), ' s')} (median of {syn.get('runs')}).",
                  f"- Peak RSS: harness {_fmt(sc.get('harness_peak_rss_mb'), ' MB')}, "
                  f"server {_fmt(sc.get('server_peak_rss_mb'), ' MB')}.", ""]
    lines += _bars(result)
    return "\n".join(lines)


def _bars(result: dict[str, Any]) -> list[str]:
    s = result["sections"]

    def sync_median(n: int, key: str = "release_spread_ms") -> float | None:
        for r in s.get("sync", {}).get("rows", []):
            if r["server"] == "uvicorn" and r["sync"] == "last-byte" and r["n"] == n:
                return r[key]["median"]  # type: ignore[no-any-return]
        return None

    def detection_row(n: int) -> dict[str, Any]:
        for r in s.get("detection", {}).get("rows", []):
            if r["server"] == "uvicorn" and r["sync"] == "last-byte" and r["n"] == n:
                return r  # type: ignore[no-any-return]
        return {}

    scale = s.get("scale", {})
    same = scale.get("same_chat", {})
    rows = [
        ("last-byte release spread, N=50 (ms)", sync_median(50),
         BARS["release_spread_n50_ms"], False),
        ("last-byte release spread, N=1000 (ms)",
         sync_median(1000) if sync_median(1000) is not None
         else (same.get("release_spread_ms") or {}).get("median") if same.get("n") == 1000
         else None,
         BARS["release_spread_n1000_ms"], False),
        ("detection of no-unique-index, N=2, last-byte", detection_row(2).get("catch_rate"),
         BARS["detection_n2_last_byte"], True),
        ("race phase of `harness race --n 50` (s)",
         s.get("wall", {}).get("race_phase_s", {}).get("median"), BARS["race_phase_s"], False),
        ("cold end to end (s)", s.get("wall", {}).get("cold_s", {}).get("median"),
         BARS["cold_s"], False),
        ("409 p99 during an N=50 burst (ms)",
         s.get("service", {}).get("latency_409_ms", {}).get("p99"), BARS["p99_409_n50_ms"],
         False),
        ("N=1000 burst wall (s)",
         (same.get("wall_s") or {}).get("median") if same.get("n") == 1000 else None,
         BARS["n1000_wall_s"], False),
        ("harness peak RSS (MB)", scale.get("harness_peak_rss_mb"), BARS["harness_rss_mb"],
         False),
        ("checkers on 100,000 ops (s)",
         (scale.get("synthetic", {}).get("checker_s") or {}).get("median"),
         BARS["checker_100k_s"], False),
    ]
    lines = ["## Against the bars", "", "| figure | measured | bar |", "|---|---:|---|"]
    for name, value, bar, higher in rows:
        verdict = _bar(value, bar, higher_is_better=higher)
        if name.startswith("detection"):
            verdict += _unresolved(detection_row(2), bar)
        lines.append(f"| {name} | {_fmt(value)} | {verdict} |")
    return lines


def _unresolved(row: dict[str, Any], bar: float) -> str:
    """A rate from K trials judged against a bar its 95% interval straddles: the verdict above
    is the point estimate's, and K trials cannot settle it either way."""
    interval = wilson_interval(row["caught"], row["trials"]) if row else None
    if interval is None or not interval[0] < bar <= interval[1]:
        return ""
    lower, upper = interval
    return (f"; not resolved by {row.get('trials')} trials: the 95% interval "
            f"{_fmt(lower)}–{_fmt(upper)} contains the bar")
