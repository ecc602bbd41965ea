"""The soak's results: ``soak.json``, ``soak.md`` (one table of the totals, the reproduce
line, where the result came from, the crashes) and the same table on the console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raceharness.shell.provenance import provenance_markdown


def write_results(out: Path, result: dict[str, Any]) -> None:
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "soak.md").write_text(render_markdown(result), encoding="utf-8")


def _counts(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    mbz, runs, reqs = result["must_be_zero"], result["runs"], result["requests"]
    lat, prov, restart = reqs["conflict_latency_ms"], result["provider"], result["restart"]
    cfg, res, machine = result["config"], result["resources"], result["machine"]
    bursts = reqs["bursts"]
    verdict = "ok" if result["ok"] else "NOT OK"
    if result["interrupted"]:
        verdict += f" (interrupted by {result['interrupt_signal']}: partial)"
    if result["crash_count"]:
        verdict += f" ({result['crash_count']} crash(es))"
    restart_text = (f"instance {restart['instance']} SIGKILLed at {restart['killed_at_s']}s "
                    f"holding a run, back in {restart['restart_s']}s"
                    if restart.get("done") else "not done")
    ref_rss = res["reference_peak_rss_kib"]
    return [
        ("verdict", verdict),
        ("active runs left (must be 0)", str(mbz["active_runs_left"])),
        ("provider calls without a tracked run (must be 0)",
         str(mbz["untracked_provider_calls"])),
        ("load", f"{result['timing_s']['load']:.0f}s, {cfg['concurrency']} workers, "
                 f"{cfg['instances']} instances, lease {cfg['lease_s']:g}s, seed {cfg['seed']}"
                 + (f", through {cfg['pooler']}" if cfg.get("pooler") else "")),
        ("requests", f"{reqs['total']}: {_counts(reqs['by_outcome'])}"),
        ("conflicts (409)", f"{reqs['conflicts']}; last byte -> 409 p50 {_ms(lat['p50'])}, "
                            f"p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}"),
        ("bursts", f"{bursts['count']} of {bursts['size_min']}-{bursts['size_max']} turns on "
                   f"one chat: {bursts['with_conflicts']} with conflicts, "
                   f"{bursts['one_winner']} with exactly one winner, "
                   f"{bursts['more_than_one_winner']} with more (must be 0), "
                   f"{bursts['hit_by_restart']} hit by the restart"),
        ("runs started", f"{runs['started']}: {_counts(runs['by_status'])}"),
        ("runs ended", str(runs["ended"])),
        ("runs reaped (lease expired)", str(runs["reaped"])),
        ("stops", _counts(reqs["stops"])),
        ("provider calls", f"{prov['calls']}: {_counts(prov['by_mode'])}"),
        ("instance restart", restart_text),
        ("peak RSS", f"harness {res['harness_peak_rss_kib'] // 1024} MiB, reference "
                     f"{'?' if ref_rss is None else ref_rss // 1024} MiB (max per process)"),
        ("machine", f"{machine['cores']} cores ({machine['cpu_model'] or 'unknown CPU'}), "
                    f"{machine['memory_mib']} MiB, Python {machine['python']}"),
        ("duration", f"{result['timing_s']['total']:.0f}s in all (settle "
                     f"{result['timing_s']['settle']:.1f}s)"),
    ]


def render_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Soak: {result['config']['duration_s']:g}s of mixed load against the embedded "
             "reference", "",
             "Bursts on one chat, turns on distinct chats, stops, client disconnects, provider "
             "errors and one instance crash + restart; totals from `ai_chat_runs` and the fake "
             "provider's ledger.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in _rows(result)]
    lines += ["", f"Reproduce: `{result['config']['reproduce']}`", ""]
    provenance = provenance_markdown(result.get("provenance"))
    if provenance:
        lines += [provenance, ""]
    if result["crashes"]:
        lines += ["Crashes:", "", *[f"- {c}" for c in result["crashes"]], ""]
    return "\n".join(lines)


def console_summary(result: dict[str, Any]) -> str:
    rows = _rows(result)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:{width}}  {v}" for k, v in rows)
