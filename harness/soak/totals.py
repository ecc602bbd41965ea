"""The soak's totals (pure): ``soak.json`` from what the load counted, the database's
``ai_chat_runs`` and the fake provider's ledger. The keys are listed in the package's
docstring; nothing here reads or writes anything."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from raceharness.core.protocol import ACTIVE_STATUSES
from raceharness.core.stats import percentiles
from raceharness.soak.load import Req, Tally
from raceharness.soak.plan import SCHEMA, SoakPlan


def soak_result(plan: SoakPlan, tally: Tally, db: dict[str, Any], ledger: Sequence[Any], *,
                interrupt_signal: str | None, timing_s: dict[str, float],
                active_at_load_end: int | None, postgres: str | None,
                harness_peak_rss_kib: int, machine: dict[str, Any],
                pooler: str | None = None) -> dict[str, Any]:
    """``timing_s``: ``load``, ``settle`` and ``total`` seconds; ``db``: the counts from
    ``ai_chat_runs`` (``run.db_totals``); ``ledger``: the fake provider's calls; ``pooler``:
    what stood between the reference and Postgres (None: nothing)."""
    reqs = list(tally.reqs.values())
    all_runs: dict[str, str] = db["runs"]
    nonce_run = {r.nonce: r.run_id for r in reqs}
    untracked = [c for c in ledger if c.nonce is None or not nonce_run.get(c.nonce)
                 or nonce_run[c.nonce] not in all_runs]
    per_nonce = Counter(c.nonce for c in ledger if c.nonce is not None)
    stream_ids = {r.run_id for r in reqs if r.run_id}
    by_action: dict[str, Counter[str]] = {}
    for r in reqs:
        by_action.setdefault(r.action, Counter())[r.outcome()] += 1
    runs_by_action: dict[str, Counter[str]] = {}
    for r in reqs:
        if r.run_id:
            runs_by_action.setdefault(r.action, Counter())[
                all_runs.get(r.run_id, "missing")] += 1
    latencies = sorted((r.headers_ns - r.sent_ns) / 1e6 for r in reqs
                       if r.status == 409 and r.headers_ns and r.sent_ns)
    outcomes = Counter(r.outcome() for r in reqs)
    by_status = dict(sorted(db["by_status"].items()))
    active_left = db["active"]
    untracked_n = len(untracked)
    interrupted = interrupt_signal is not None
    bursts = burst_summary(tally.bursts, tally.restart)
    ok = (active_left == 0 and untracked_n == 0 and tally.crash_count == 0
          and bursts["more_than_one_winner"] == 0 and not interrupted)
    reference_rss = [e["vm_hwm_kib"] for e in tally.rss if e["vm_hwm_kib"] is not None]
    return {
        "schema": SCHEMA,
        "ok": ok,
        "interrupted": interrupted,
        "interrupt_signal": interrupt_signal,
        "crashes": tally.crashes,
        "crash_count": tally.crash_count,
        "must_be_zero": {"active_runs_left": active_left,
                         "untracked_provider_calls": untracked_n},
        "config": {"duration_s": plan.duration_s, "seed": plan.seed,
                   "instances": plan.instances, "concurrency": plan.concurrency,
                   "lease_s": plan.lease_s, "target": "embedded",
                   "postgres": postgres, "pooler": pooler, "autonomous_runs": False,
                   "reproduce": plan.reproduce_line()},
        "timing_s": {k: round(timing_s[k], 3) for k in ("load", "settle", "total")},
        "settle": {"bound_s": plan.settle_bound_s,
                   "active_when_load_ended": active_at_load_end},
        "runs": {
            "started": sum(by_status.values()),
            "by_status": by_status,
            "ended": sum(n for s, n in by_status.items()
                         if s not in ACTIVE_STATUSES),
            "reaped": db["reaped"],
            "aborted_by_reason": db["aborted_by_reason"],
            "by_action": {a: dict(sorted(c.items()))
                          for a, c in sorted(runs_by_action.items())},
            "unattributed": len(set(all_runs) - stream_ids),
            "stream_ids_missing": len(stream_ids - set(all_runs)),
        },
        "requests": {
            "total": len(reqs),
            "by_outcome": dict(sorted(outcomes.items())),
            "by_action": {a: dict(sorted(c.items())) for a, c in sorted(by_action.items())},
            "conflicts": outcomes.get("409", 0),
            "conflict_latency_ms": percentiles(latencies),
            "bursts": bursts,
            "stops": dict(sorted(tally.stops.items())),
            "malformed_streams": sum(1 for r in reqs if r.findings and r.clean()),
            "per_minute": per_minute(reqs),
        },
        "provider": {
            "calls": len(ledger),
            "by_mode": dict(sorted(Counter(c.mode for c in ledger).items())),
            "untracked_calls": untracked_n,
            "untracked_examples": [
                {"nonce": c.nonce, "mode": c.mode,
                 "request": None if c.nonce not in tally.reqs else {
                     "action": tally.reqs[c.nonce].action,
                     "outcome": tally.reqs[c.nonce].outcome(),
                     "run_id": tally.reqs[c.nonce].run_id}}
                for c in untracked[:10]],
            "repeat_calls": sum(n - 1 for n in per_nonce.values() if n > 1),
        },
        "restart": tally.restart,
        "service_metrics": {"counters": dict(sorted(tally.metrics.items())),
                            "scrapes": tally.metrics_scrapes,
                            "failed_scrapes": tally.metrics_failures},
        "resources": {
            "harness_peak_rss_kib": harness_peak_rss_kib,
            "reference_peak_rss_kib": max(reference_rss) if reference_rss else None,
            "reference_processes": tally.rss,
        },
        "machine": machine,
    }


def parse_metrics(text: str) -> Counter[str]:
    """The counters of a Prometheus text page (``/metrics``); gauges are left out."""
    counters: Counter[str] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if not name or name.startswith("ai_chat_active_runs"):  # a gauge, not a counter
            continue
        try:
            counters[name] += int(float(value))
        except ValueError:
            continue
    return counters


def per_minute(reqs: list[Req]) -> list[dict[str, int]]:
    """Requests, conflicts and runs started per minute of load (a slowdown shows here)."""
    rows: dict[int, Counter[str]] = {}
    for r in reqs:
        row = rows.setdefault(r.minute, Counter())
        row["requests"] += 1
        row["conflicts"] += r.status == 409
        row["runs"] += r.run_id is not None
    return [{"minute": m, "requests": c["requests"], "conflicts": c["conflicts"],
             "runs": c["runs"]} for m, c in sorted(rows.items())]


def burst_summary(bursts: list[dict[str, Any]], restart: dict[str, Any]) -> dict[str, Any]:
    """Winners per burst. A burst some of whose turns went to the instance killed while it was
    in flight can lose its winner's answer with the instance (``hit_by_restart``): zero
    winners is then expected; anywhere else it is a finding, and more than one always is."""
    def hit(b: dict[str, Any]) -> bool:
        killed = restart.get("killed_at_s")
        return (killed is not None and restart.get("instance") in b["instances"]
                and b["from_s"] <= killed <= b["to_s"] and b.get("unanswered", 0) > 0)

    sizes = [b["n"] for b in bursts]
    winners = Counter(str(b.get("winners", 0)) for b in bursts)
    return {"count": len(bursts), "requests": sum(sizes),
            "size_min": min(sizes) if sizes else None, "size_max": max(sizes) if sizes else None,
            "with_conflicts": sum(1 for b in bursts if b.get("conflicts")),
            "one_winner": sum(1 for b in bursts if b.get("winners") == 1),
            "more_than_one_winner": sum(1 for b in bursts if b.get("winners", 0) > 1),
            "hit_by_restart": sum(1 for b in bursts if hit(b)),
            "no_winner_unexplained": sum(1 for b in bursts
                                         if not b.get("winners") and not hit(b)),
            "by_winners": dict(sorted(winners.items())),
            "by_sync": dict(sorted(Counter(b["sync"] for b in bursts).items())),
            "by_end": dict(sorted(Counter(b["end"] for b in bursts).items()))}
