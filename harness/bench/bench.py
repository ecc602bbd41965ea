"""``harness bench``: how tight the race is, how often it catches a bug, and how far it scales.

Everything runs against the embedded reference in one process, side by side, so every figure
has its baseline from the same run on the same machine:

- **sync** — per sync mode (``last-byte``, ``naive``; ``h2-single-packet`` when the reference is
  served over HTTP/2) and N: the client release spread (first to last final-byte send) and the
  server-observed arrival spread (the reference stamps each request's arrival on the host's
  monotonic clock; see ``reference/arrival.py``). Medians over trials, and the ratio to naive.
- **detection** — the fraction of single ``harness race`` trials that catch the
  ``no-unique-index`` fault at N=2 (a double-click) and N=50 per sync mode, its 95% Wilson lower
  bound, and the trials needed for 95% confidence of a catch.
- **service** — 409 latency p50/p99 during an N=50 burst (client-observed and the server's own
  time), rejections per second, the winner's time to first frame, and the CPU each loser costs
  the reference, Postgres and the harness (N=50 trials against as many one-turn trials on the
  same service), and the losers' share of the reference's one event loop per burst.
- **wall** — ``harness race --n 50`` as a fresh process (cold: Postgres and reference start
  included) and its race phase alone (the trial; the burst).
- **scale** — a same-chat burst at N=1000 and a burst of 200 chats x 5 turns: wall time, every
  property evaluated, peak RSS of the harness and the server, checker time on the history and
  on a synthetic 100,000-operation history.

Results go to ``DIR/bench.json`` and ``DIR/bench.md`` with the machine (cores, CPU model,
Python, Postgres). The benchmark asserts nothing: bars are compared in the Markdown only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from raceharness.bench.cpu import CpuMeter, cpu_delta, local_postmaster_pid
from raceharness.core.history import Op, Trial
from raceharness.core.properties import check_trial
from raceharness.core.scenario import Scenario, catalogue
from raceharness.runtime import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Interrupted,
    raise_on_signal,
)
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import DbObserver, ServiceClient
from raceharness.stack.embedded import EmbeddedService, embedded_postgres, reference_service
from raceharness.stack.postgres import PostgresCluster, PostgresUnavailable
from raceharness.trial.context import SYNC_MODES, RaceConfig, TrialContext
from raceharness.trial.program import StepNotAvailable, run_scenario_trial
from raceharness.trial.suite import stop_leftovers

# v2: service.cpu_per_loser_ms.reference_loop_ms_per_burst (was reference_floor_last_409_ms)
BENCH_SCHEMA = "raceharness/bench/v2"
SECTIONS = ("wall", "scale", "sync", "service", "detection")

# The bars of issue #5 (2-core machines): shown beside the figures, never asserted.
BARS = {
    "release_spread_n50_ms": 0.5, "release_spread_n1000_ms": 10.0,
    "detection_n2_last_byte": 0.95, "race_phase_s": 1.5, "cold_s": 8.0,
    "p99_409_n50_ms": 50.0, "n1000_wall_s": 30.0, "harness_rss_mb": 250.0,
    "checker_100k_s": 2.0,
}


@dataclass(frozen=True)
class Plan:
    sync_ns: tuple[int, ...]
    sync_trials: int
    sync_trials_large: int          # for N >= 200
    detection_ns: tuple[int, ...]
    detection_trials: int
    service_trials: int
    cold_runs: int
    scale_n: int
    scale_chats: int
    scale_per_chat: int
    scale_trials: int = 3
    synthetic_ops: int = 100_000
    wall_n: int = 50
    service_instances: int = 1      # reference processes behind the service section's bursts


FULL = Plan(sync_ns=(2, 10, 50, 200, 1000), sync_trials=7, sync_trials_large=3,
            detection_ns=(2, 50), detection_trials=50, service_trials=20, cold_runs=3,
            scale_n=1000, scale_chats=200, scale_per_chat=5)
QUICK = Plan(sync_ns=(2, 10, 50), sync_trials=3, sync_trials_large=1, detection_ns=(2, 50),
             detection_trials=10, service_trials=5, cold_runs=1, scale_n=200, scale_chats=20,
             scale_per_chat=5, scale_trials=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a short run (N up to 50, K=10 detection trials, N=200 scale)")
    parser.add_argument("--out", metavar="DIR", default="reports/bench",
                        help="write bench.json and bench.md here (default reports/bench)")
    parser.add_argument("--sections", metavar="LIST", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--trials", type=int, metavar="K",
                        help="detection trials per cell (default 50, --quick 10)")
    parser.add_argument("--service-instances", type=int, metavar="K",
                        help="reference instances (processes on one database) for the service "
                             "section; the burst is spread over them (default 1)")
    parser.add_argument("--seed", type=int, help="seed of the first trial (default random)")


def _parse(args: argparse.Namespace) -> tuple[Plan, tuple[str, ...]]:
    plan = QUICK if args.quick else FULL
    if args.trials is not None:
        if args.trials < 1:
            raise ValueError(f"--trials: expected an integer >= 1, got {args.trials}")
        plan = replace(plan, detection_trials=args.trials)
    instances = args.service_instances
    if instances is not None:
        if not 1 <= instances <= 8:
            raise ValueError(f"--service-instances: expected an integer from 1 to 8, got "
                             f"{instances}")
        plan = replace(plan, service_instances=instances)
    sections = tuple(s.strip() for s in str(args.sections).split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"--sections: unknown section(s) {', '.join(unknown) or '(none)'}; "
                         f"valid: {', '.join(SECTIONS)}")
    return plan, sections


def run_bench_command(args: argparse.Namespace) -> int:
    try:
        plan, sections = _parse(args)
    except ValueError as exc:
        print(f"harness bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    bench = Bench(plan, sections, seed=args.seed, quick=args.quick)
    previous = _previous(out, bench.result) if set(sections) != set(SECTIONS) else None
    code = EXIT_OK
    try:
        trio.run(bench.run)
    except (PostgresUnavailable, OSError) as exc:
        print(f"harness bench: {exc}", file=sys.stderr)
        bench.result["error"] = str(exc)
        code = EXIT_UNREACHABLE
    except (KeyboardInterrupt, Interrupted):
        print("harness bench: interrupted; writing the figures measured so far", file=sys.stderr)
        bench.result["interrupted"] = True
        code = EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        interrupted = group.subgroup((KeyboardInterrupt, Interrupted))
        if interrupted is None:
            raise
        bench.result["interrupted"] = True
        code = EXIT_INTERRUPTED
    if previous is not None:
        merge_sections(bench.result, previous)
    write_results(out, bench.result)
    print(render_markdown(bench.result))
    print(f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}", file=sys.stderr)
    return code


# -- statistics (pure) -------------------------------------------------------------------------

def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a rate (95% by default)."""
    if trials == 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # It always holds p; the clamps only undo rounding at p = 0 and p = 1.
    return min(p, max(0.0, (centre - margin) / denom)), max(p, min(1.0, (centre + margin) / denom))


def wilson_lower(successes: int, trials: int, z: float = 1.96) -> float | None:
    """The lower end of the Wilson score interval (95% by default)."""
    interval = wilson_interval(successes, trials, z)
    return None if interval is None else interval[0]


def trials_for_confidence(p: float | None, confidence: float = 0.95) -> int | None:
    """Independent trials needed so that at least one catches with ``confidence``."""
    if p is None or p <= 0:
        return None
    if p >= 1:
        return 1
    return math.ceil(math.log(1 - confidence) / math.log(1 - p))


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- reading a trial (pure) ------------------------------------------------------------------

def loser_cpu(one: dict[str, float], burst: dict[str, float], *, k: int, n: int,
              instances: int = 1) -> dict[str, Any]:
    """CPU ms per loser for each group, from k trials of one turn (``one``) and k trials of
    N turns (``burst``). The reference answers on one event loop per instance: the losers'
    reference CPU, spread over the instances, is how long they hold each loop per burst. Not
    all of it lies between the release and the last 409: accepting a loser's connection and
    parsing its headers come before the release, closing it after its 409."""
    per = {g: max(0.0, (burst[g] - one.get(g, 0.0)) / k / (n - 1) * 1000) for g in burst}
    loop = per.get("reference", 0.0) * (n - 1) / instances
    return {**{g: _r(v) for g, v in sorted(per.items())}, "total": _r(sum(per.values())),
            "reference_loop_ms_per_burst": _r(loop), "instances": instances}


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


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


# -- the machine -------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model or platform.processor() or None,
            "python": platform.python_version(), "platform": platform.platform(),
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit); children
    (Postgres, the reference) inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def _rss_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


# -- the bench -------------------------------------------------------------------------------

@dataclass
class TrialRun:
    trial: Trial
    verdicts: dict[str, str]
    wall_s: float

    @property
    def caught(self) -> bool:
        return "invalid" in self.verdicts.values()

    @property
    def unknown(self) -> bool:
        return not self.caught and "unknown" in self.verdicts.values()


class Bench:
    def __init__(self, plan: Plan, sections: Sequence[str], *, seed: int | None = None,
                 quick: bool = False) -> None:
        self.plan = plan
        self.sections = tuple(sections)
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self.trial_no = 0
        self.result: dict[str, Any] = {
            "schema": BENCH_SCHEMA, "quick": quick, "seed": self.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(), "plan": plan.__dict__, "bars": BARS,
            "sections": {}, "interrupted": False,
        }
        self.provider = FakeProvider()
        self.cluster: PostgresCluster | None = None
        self.scenario = catalogue()["same-chat-burst"]

    def _progress(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    async def run(self) -> None:
        try:
            await self._run()
        finally:  # an interrupted run writes what it measured, dated too
            for section in self.result["sections"].values():
                section.setdefault("measured", self.result["started"])

    async def _run(self) -> None:
        self.result["machine"]["open_files_limit"] = raise_open_files_limit(
            4 * max(self.plan.sync_ns + (self.plan.scale_n,)) + 512)
        if "wall" in self.sections:  # fresh processes first, before this one warms anything
            self.result["sections"]["wall"] = await self.wall()
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            await nursery.start(raise_on_signal)
            await nursery.start(self.provider.serve, "127.0.0.1", 0)
            self.cluster = await stack.enter_async_context(embedded_postgres())
            self.result["machine"]["postgres"] = await trio.to_thread.run_sync(
                _server_version, self.cluster.dsn)
            for name in ("scale", "sync", "service", "detection"):
                if name in self.sections:
                    self._progress(f"section {name}")
                    self.result["sections"][name] = await getattr(self, name)()
            nursery.cancel_scope.cancel()

    # -- running trials ------------------------------------------------------------------

    async def trials(self, service: EmbeddedService, scenario: Scenario, *, n: int, sync: str,
                     k: int, config: RaceConfig | None = None) -> list[TrialRun]:
        targets = service.targets
        services = [ServiceClient(t) for t in targets]
        db = DbObserver(service.dsn, limiter_size=max(8, min(n, 64)))
        runs: list[TrialRun] = []
        base = config or RaceConfig()
        try:
            for _ in range(k):
                ctx = TrialContext(
                    target=targets[0], config=replace(base, n=n, sync=sync),
                    provider=self.provider, db=db, service=services[0],
                    trial_no=self.trial_no, seed=(self.seed + self.trial_no) % (1 << 32),
                    targets=targets, services=services, control=service)
                self.trial_no += 1
                t0 = time.perf_counter()
                try:
                    trial = await run_scenario_trial(ctx, scenario, {})
                finally:
                    with trio.CancelScope(shield=True):
                        await stop_leftovers(ctx)
                wall = time.perf_counter() - t0
                results = check_trial(trial, scenario.properties)
                runs.append(TrialRun(trial, {p: r.verdict for p, r in results.items()}, wall))
        finally:
            for svc in services:
                await svc.aclose()
        return runs

    def _service(self, *, faults: Sequence[str] = (), server: str = "uvicorn",
                 instances: int = 1) -> Any:
        assert self.cluster is not None
        return reference_service(self.cluster, self.provider.base_url, faults=faults,
                                 server=server, instances=instances)

    def _modes(self) -> list[tuple[str, str]]:
        """(server, sync mode) pairs to measure: HTTP/1.1 modes on uvicorn (the reference's
        default; it speaks no HTTP/2) and every mode on hypercorn."""
        return ([("uvicorn", m) for m in SYNC_MODES if m != "h2-single-packet"]
                + [("hypercorn", m) for m in SYNC_MODES])

    # -- sections ------------------------------------------------------------------------

    async def sync(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        by_server: dict[str, list[str]] = {}
        for server, mode in self._modes():
            by_server.setdefault(server, []).append(mode)
        for server, modes in by_server.items():
            async with self._service(server=server) as service:
                for n in self.plan.sync_ns:
                    k = self.plan.sync_trials if n < 200 else self.plan.sync_trials_large
                    for mode in modes:
                        self._progress(f"sync {server} {mode} N={n} x{k}")
                        runs = await self.trials(service, self.scenario, n=n, sync=mode, k=k,
                                                 config=_large_config(n))
                        figs = [trial_figures(r.trial) for r in runs]
                        rows.append({
                            "server": server, "sync": mode, "n": n, "trials": k,
                            "release_spread_ms": _summary([f["release_spread_ms"] for f in figs]),
                            "arrival_spread_ms": _summary([f["arrival_spread_ms"] for f in figs]),
                            "verdicts": _verdict_counts(runs),
                            "notes": sorted({str(r.trial.meta["h2_note"]) for r in runs
                                             if r.trial.meta.get("h2_note")}),
                        })
        for row in rows:
            base = next((r for r in rows if r["server"] == row["server"]
                         and r["n"] == row["n"] and r["sync"] == "naive"), None)
            for key in ("release_spread_ms", "arrival_spread_ms"):
                row[key]["ratio_to_naive"] = ratio(
                    row[key]["median"], base[key]["median"] if base else None)
        return {"rows": rows}

    async def service(self) -> dict[str, Any]:
        n, k = 50, self.plan.service_trials
        async with self._service(instances=self.plan.service_instances) as service:
            assert self.cluster is not None
            postmaster = self.cluster.postmaster_pid() or await trio.to_thread.run_sync(
                local_postmaster_pid, self.cluster.dsn)
            meter = CpuMeter([i.process.pid for i in service.instances], postmaster)
            # The baseline, same service, same run: trials of one turn (set-up, one winner
            # and its stream, the checks). What N=50 costs on top of it is the 49 losers'.
            self._progress(f"service baseline N=1 x{k}")
            before = meter.snapshot()
            await self.trials(service, self.scenario, n=1, sync="last-byte", k=k)
            middle = meter.snapshot()
            self._progress(f"service N={n} x{k}")
            runs = await self.trials(service, self.scenario, n=n, sync="last-byte", k=k)
            after = meter.snapshot()
        cpu = loser_cpu(cpu_delta(before, middle), cpu_delta(middle, after), k=k, n=n,
                        instances=len(service.instances))
        figs = [trial_figures(r.trial) for r in runs]
        lat = [x for f in figs for x in f["latency_409_ms"]]
        app = [x for f in figs for x in f["server_409_ms"]]
        ttff = [f["winner_ttff_ms"] for f in figs if f["winner_ttff_ms"] is not None]
        rps = [f["rejections_per_s"] for f in figs if f["rejections_per_s"] is not None]
        return {
            "n": n, "trials": k, "responses_409": len(lat),
            "latency_409_ms": {"p50": _r(percentile(lat, 50)), "p99": _r(percentile(lat, 99)),
                               "max": _r(max(lat) if lat else None)},
            "server_409_ms": {"p50": _r(percentile(app, 50)), "p99": _r(percentile(app, 99))},
            "rejections_per_s": {"median": _r(median(rps), 1)},
            "winner_ttff_ms": {"median": _r(median(ttff)), "p99": _r(percentile(ttff, 99))},
            "last_409_ms": {"median": _r(median([max(f["latency_409_ms"]) for f in figs
                                                 if f["latency_409_ms"]]))},
            "cpu_per_loser_ms": cpu,
            "verdicts": _verdict_counts(runs),
        }

    async def detection(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        k = self.plan.detection_trials
        by_server: dict[str, list[str]] = {}
        for server, mode in self._modes():
            if server == "uvicorn" or mode == "h2-single-packet":
                by_server.setdefault(server, []).append(mode)
        for server, modes in by_server.items():
            async with self._service(faults=("no-unique-index",), server=server) as service:
                for n in self.plan.detection_ns:
                    for mode in modes:
                        self._progress(f"detection no-unique-index {server} {mode} N={n} x{k}")
                        runs = await self.trials(service, self.scenario, n=n, sync=mode, k=k)
                        caught = sum(r.caught for r in runs)
                        p = caught / len(runs)
                        lower, upper = wilson_interval(caught, len(runs)) or (None, None)
                        rows.append({
                            "fault": "no-unique-index", "server": server, "sync": mode, "n": n,
                            "trials": len(runs), "caught": caught,
                            "unknown": sum(r.unknown for r in runs),
                            "catch_rate": _r(p), "catch_rate_wilson95_lower": _r(lower),
                            "catch_rate_wilson95_upper": _r(upper),
                            "trials_for_95": trials_for_confidence(p),
                            "trials_for_95_conservative": trials_for_confidence(lower),
                        })
        return {"rows": rows}

    async def scale(self) -> dict[str, Any]:
        """Each burst ``plan.scale_trials`` times: median wall, every verdict seen, peak RSS."""
        out: dict[str, Any] = {}
        n, k = self.plan.scale_n, self.plan.scale_trials
        props = self.scenario.properties
        async with self._service() as service:
            self._progress(f"scale: same-chat burst N={n} x{k}")
            runs = await self.trials(service, self.scenario, n=n, sync="last-byte", k=k,
                                     config=_large_config(n))
            checks = [timed(partial(check_trial, r.trial, props))[1] for r in runs]
            figs = [trial_figures(r.trial) for r in runs]
            out["same_chat"] = {
                "n": n, "trials": k, "wall_s": _summary([r.wall_s for r in runs]),
                "verdicts": _verdict_counts(runs),
                "all_evaluated": all("unknown" not in r.verdicts.values() for r in runs),
                "invalid": sorted({p for r in runs for p, v in r.verdicts.items()
                                   if v == "invalid"}),
                "release_spread_ms": _summary([f["release_spread_ms"] for f in figs]),
                "arrival_spread_ms": _summary([f["arrival_spread_ms"] for f in figs]),
                "ops": len(runs[0].trial.ops), "checker_s": _summary(checks),
            }
            synth = []
            for _ in range(k):  # a fresh trial each time: nothing memoised from the last run
                synthetic = synthetic_trial(runs[0].trial, self.plan.synthetic_ops)
                synth.append(timed(partial(check_trial, synthetic, props)))
            out["synthetic"] = {"ops": len(synthetic.ops), "runs": k,
                                "checker_s": _summary([t for _, t in synth]),
                                "verdicts": {p: r.verdict for p, r in synth[0][0].items()}}
            chats, per_chat = self.plan.scale_chats, self.plan.scale_per_chat
            self._progress(f"scale: {chats} chats x {per_chat} turns x{k}")
            many = _many_chats_scenario(chats, per_chat)
            try:
                runs = await self.trials(service, many, n=chats * per_chat, sync="last-byte",
                                         k=k, config=_large_config(chats * per_chat))
                out["many_chats"] = {
                    "chats": chats, "per_chat": per_chat, "trials": k,
                    "wall_s": _summary([r.wall_s for r in runs]),
                    "verdicts": _verdict_counts(runs),
                    "all_evaluated": all("unknown" not in r.verdicts.values() for r in runs),
                    "ops": len(runs[0].trial.ops),
                }
            except StepNotAvailable as exc:
                out["many_chats"] = {"skipped": str(exc)}
            out["server_peak_rss_mb"] = _r(_peak_rss_mb(service.instances[0].process.pid), 1)
        out["harness_peak_rss_mb"] = _r(_rss_mb_self(), 1)
        return out

    async def wall(self) -> dict[str, Any]:
        cold, trial_span, burst = [], [], []
        for i in range(self.plan.cold_runs):
            n = self.plan.wall_n
            self._progress(f"wall: harness race --n {n}, fresh process {i + 1}")
            with tempfile.TemporaryDirectory(prefix="raceharness-bench-") as tmp:
                argv = [sys.executable, "-m", "raceharness", "race", "--n", str(n), "--report", tmp,
                        "--seed", str((self.seed + i) % (1 << 32))]
                t0 = time.perf_counter()
                proc = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                              check=False)
                cold.append(time.perf_counter() - t0)
                if proc.returncode not in (0, 1, 3):
                    raise OSError("harness race failed in the wall-time run: "
                                  + proc.stderr.decode(errors="replace")[-800:])
                for fig in _figures_from_history(Path(tmp) / "history.jsonl"):
                    if fig["trial_span_s"] is not None:
                        trial_span.append(fig["trial_span_s"])
                    if fig["burst_s"] is not None:
                        burst.append(fig["burst_s"])
        return {"n": self.plan.wall_n, "runs": len(cold), "cold_s": _summary(cold),
                "race_phase_s": _summary(trial_span), "burst_s": _summary(burst),
                "race_phase_share_of_cold": ratio(median(trial_span), median(cold))}


def _large_config(n: int) -> RaceConfig:
    """Phase bounds that grow with N (the defaults are sized for N <= 200); losers-fast keeps
    the command line's default (engine.default_losers_fast_bound_ms)."""
    extra = max(0.0, (n - 200) / 1000) * 20
    return RaceConfig(answer_timeout_s=10 + extra, drain_timeout_s=10 + extra,
                      connect_timeout_s=10 + extra)


def _many_chats_scenario(chats: int, per_chat: int) -> Scenario:
    from raceharness.core.scenario import parse_scenario

    return parse_scenario({
        "name": "many-chats-burst",
        "summary": f"{chats} chats x {per_chat} simultaneous turns each",
        "n": chats * per_chat, "trials": 1,
        "properties": ["chats/one-winner-each", "stream/well-formed"],
        "steps": [{"do": "new-chats", "n": chats},
                  {"do": "burst", "chats": "distinct", "per-chat": per_chat},
                  {"do": "drain"}],
    }, "<bench>")


def _figures_from_history(path: Path) -> Iterator[dict[str, Any]]:
    from raceharness.core.history import loads_trials

    _, trials = loads_trials(path.read_text(encoding="utf-8"))
    for trial in trials:
        yield trial_figures(trial)


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    return {"median": _r(median(present)), "min": _r(min(present) if present else None),
            "max": _r(max(present) if present else None), "count": len(present)}


def _verdict_counts(runs: Sequence[TrialRun]) -> dict[str, int]:
    counts = {"valid": 0, "invalid": 0, "unknown": 0}
    for r in runs:
        counts["invalid" if r.caught else "unknown" if r.unknown else "valid"] += 1
    return counts


def _server_version(dsn: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return None if row is None else str(row[0])
    except psycopg.Error:
        return None


def _previous(out: Path, result: dict[str, Any]) -> dict[str, Any] | None:
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
            result["sections"][name] = section


# -- output ------------------------------------------------------------------------------

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
