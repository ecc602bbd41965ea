"""Figures from trials (pure): the timing facts of one burst from its history, the CPU each
loser costs, verdict counts, and a synthetic history grown from a real one for the checkers'
scale figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raceharness.core.history import Op, Trial
from raceharness.core.stats import rounded


@dataclass
class TrialRun:
    """One bench trial: its history, each property's verdict, and its wall time (the steps
    and the cleanup; the checkers not included)."""
    trial: Trial
    verdicts: dict[str, str]
    wall_s: float

    @property
    def caught(self) -> bool:
        return "invalid" in self.verdicts.values()

    @property
    def unknown(self) -> bool:
        return not self.caught and "unknown" in self.verdicts.values()


def verdict_counts(runs: Sequence[TrialRun]) -> dict[str, int]:
    counts = {"valid": 0, "invalid": 0, "unknown": 0}
    for r in runs:
        counts["invalid" if r.caught else "unknown" if r.unknown else "valid"] += 1
    return counts


def loser_cpu(one: dict[str, float], burst: dict[str, float], *, k: int, n: int,
              instances: int = 1) -> dict[str, Any]:
    """CPU ms per loser for each group, from k trials of one turn (``one``) and k trials of
    N turns (``burst``). The reference answers on one event loop per instance: the losers'
    reference CPU, spread over the instances, is how long they hold each loop per burst. Not
    all of it lies between the release and the last 409: accepting a loser's connection and
    parsing its headers come before the release, closing it after its 409."""
    per = {g: max(0.0, (burst[g] - one.get(g, 0.0)) / k / (n - 1) * 1000) for g in burst}
    loop = per.get("reference", 0.0) * (n - 1) / instances
    return {**{g: rounded(v) for g, v in sorted(per.items())},
            "total": rounded(sum(per.values())), "reference_loop_ms_per_burst": rounded(loop),
            "instances": instances}


def trial_figures(trial: Trial) -> dict[str, Any]:
    """Timing facts of one burst, from its history."""
    racers = [(inv, done) for inv, done in trial.completions("turn")
              if inv.get("role") == "racer" and done is not None]
    release_ns = trial.meta.get("release_ns")
    lat, app, arrivals, answered, rejected = [], [], [], [], []
    ttff: float | None = None
    for inv, done in racers:
        value, sent = done.value, inv.get("sent_ns")
        if "server_arrival_ns" in value:
            arrivals.append(value["server_arrival_ns"])
        if value.get("headers_ns"):
            answered.append(value["headers_ns"])
        if value.get("status") == 409 and sent and value.get("headers_ns"):
            lat.append((value["headers_ns"] - sent) / 1e6)
            rejected.append(value["headers_ns"])
            if "server_app_ms" in value:
                app.append(float(value["server_app_ms"]))
        if (value.get("status") == 200 and value.get("run_id") and sent
                and value.get("first_frame_ns") and ttff is None):
            ttff = (value["first_frame_ns"] - sent) / 1e6
    spread = trial.meta.get("send_spread_ns")
    rejections_per_s = None
    if rejected and release_ns:
        span_s = (max(rejected) - release_ns) / 1e9
        rejections_per_s = len(rejected) / span_s if span_s > 0 else None
    times = [op.time_ns for op in trial.ops]
    return {
        "n": trial.meta.get("n"), "sync": trial.meta.get("sync"),
        "release_spread_ms": None if spread is None else spread / 1e6,
        "arrival_spread_ms": (max(arrivals) - min(arrivals)) / 1e6 if len(arrivals) > 1 else None,
        "latency_409_ms": lat, "server_409_ms": app, "winner_ttff_ms": ttff,
        "rejections_per_s": rejections_per_s,
        "burst_s": (max(answered) - release_ns) / 1e9 if answered and release_ns else None,
        "trial_span_s": (max(times) - min(times)) / 1e9 if times else None,
    }


def synthetic_trial(base: Trial, target_ops: int) -> Trial:
    """``base`` grown to at least ``target_ops`` operations by cloning its losers' request
    pairs under new process ids and nonces: a same-chat burst of tens of thousands."""
    pairs = [(inv, done) for inv, done in base.completions("turn")
             if inv.get("role") == "racer" and done is not None
             and done.value.get("status") == 409]
    if not pairs:
        raise ValueError("the base trial has no 409 loser to clone")
    ops = list(base.ops)
    next_process = max(op.process for op in ops) + 1_000_000
    k = 0
    while len(ops) < target_ops:
        inv, done = pairs[k % len(pairs)]
        nonce = f"synthetic-{k}"
        for op in (inv, done):
            ops.append(Op(index=len(ops), type=op.type, f=op.f, process=next_process + k,
                          time_ns=op.time_ns, nonce=nonce, value=dict(op.value)))
        k += 1
    meta = {**base.meta, "n": (base.meta.get("n") or 0) + k, "synthetic": True}
    return Trial(meta=meta, ops=ops, provider=base.provider, db=base.db)
