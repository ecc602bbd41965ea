"""Running ``harness bench``'s sections against the embedded reference (the I/O).

Every trial goes through ``trial.suite.run_trial``, the code ``harness race`` and ``harness run``
run each trial with; the checkers are timed apart from it. The figures come from
``figures.py`` and ``core/stats.py``; the machine from ``shell/machine.py``.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from raceharness.bench.cpu import CpuMeter, cpu_delta, local_postmaster_pid
from raceharness.bench.figures import (
    TrialRun,
    loser_cpu,
    synthetic_trial,
    trial_figures,
    verdict_counts,
)
from raceharness.bench.plan import (
    BARS,
    BENCH_SCHEMA,
    Plan,
    large_config,
    many_chats_scenario,
    modes_by_server,
)
from raceharness.core.properties import check_trial
from raceharness.core.scenario import Scenario, catalogue
from raceharness.core.stats import (
    median,
    percentile,
    ratio,
    rounded,
    summary,
    trials_for_confidence,
    wilson_interval,
)
from raceharness.runtime import raise_on_signal
from raceharness.shell import machine
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import DbObserver, ServiceClient
from raceharness.stack.embedded import EmbeddedService, embedded_postgres, reference_service
from raceharness.stack.postgres import PostgresCluster
from raceharness.trial.context import RaceConfig, TrialContext
from raceharness.trial.program import StepNotAvailable
from raceharness.trial.suite import run_trial


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
            "machine": describe_machine(), "plan": plan.__dict__, "bars": BARS,
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
        """``k`` trials of ``scenario`` on ``service``, each through ``run_trial``."""
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
                    targets=targets, services=services, control=service,
                    settings=scenario.assumes)
                self.trial_no += 1
                t0 = time.perf_counter()
                trial = await run_trial(ctx, scenario, {})
                wall = time.perf_counter() - t0
                results = check_trial(trial, scenario.properties)
                runs.append(TrialRun(trial, {p: r.verdict for p, r in results.items()}, wall))
        finally:
            for svc in services:
                await svc.aclose()
        return runs

    def _service(self, *, faults: Sequence[str] = (), server: str = "uvicorn",
                 instances: int = 1) -> AbstractAsyncContextManager[EmbeddedService]:
        assert self.cluster is not None
        return reference_service(self.cluster, self.provider.base_url, faults=faults,
                                 server=server, instances=instances)

    # -- sections ------------------------------------------------------------------------

    async def sync(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for server, modes in modes_by_server().items():
            async with self._service(server=server) as service:
                for n in self.plan.sync_ns:
                    k = self.plan.sync_trials if n < 200 else self.plan.sync_trials_large
                    for mode in modes:
                        self._progress(f"sync {server} {mode} N={n} x{k}")
                        runs = await self.trials(service, self.scenario, n=n, sync=mode, k=k,
                                                 config=large_config(n))
                        figs = [trial_figures(r.trial) for r in runs]
                        rows.append({
                            "server": server, "sync": mode, "n": n, "trials": k,
                            "release_spread_ms": summary([f["release_spread_ms"] for f in figs]),
                            "arrival_spread_ms": summary([f["arrival_spread_ms"] for f in figs]),
                            "verdicts": verdict_counts(runs),
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
            "latency_409_ms": {"p50": rounded(percentile(lat, 50)),
                               "p99": rounded(percentile(lat, 99)),
                               "max": rounded(max(lat) if lat else None)},
            "server_409_ms": {"p50": rounded(percentile(app, 50)),
                              "p99": rounded(percentile(app, 99))},
            "rejections_per_s": {"median": rounded(median(rps), 1)},
            "winner_ttff_ms": {"median": rounded(median(ttff)),
                               "p99": rounded(percentile(ttff, 99))},
            "last_409_ms": {"median": rounded(median([max(f["latency_409_ms"]) for f in figs
                                                      if f["latency_409_ms"]]))},
            "cpu_per_loser_ms": cpu,
            "verdicts": verdict_counts(runs),
        }

    async def detection(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        k = self.plan.detection_trials
        for server, modes in modes_by_server(detection=True).items():
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
                            "catch_rate": rounded(p), "catch_rate_wilson95_lower": rounded(lower),
                            "catch_rate_wilson95_upper": rounded(upper),
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
                                     config=large_config(n))
            checks = [timed(partial(check_trial, r.trial, props))[1] for r in runs]
            figs = [trial_figures(r.trial) for r in runs]
            out["same_chat"] = {
                "n": n, "trials": k, "wall_s": summary([r.wall_s for r in runs]),
                "verdicts": verdict_counts(runs),
                "all_evaluated": all("unknown" not in r.verdicts.values() for r in runs),
                "invalid": sorted({p for r in runs for p, v in r.verdicts.items()
                                   if v == "invalid"}),
                "release_spread_ms": summary([f["release_spread_ms"] for f in figs]),
                "arrival_spread_ms": summary([f["arrival_spread_ms"] for f in figs]),
                "ops": len(runs[0].trial.ops), "checker_s": summary(checks),
            }
            synth = []
            for _ in range(k):  # a fresh trial each time: nothing memoised from the last run
                synthetic = synthetic_trial(runs[0].trial, self.plan.synthetic_ops)
                synth.append(timed(partial(check_trial, synthetic, props)))
            out["synthetic"] = {"ops": len(synthetic.ops), "runs": k,
                                "checker_s": summary([t for _, t in synth]),
                                "verdicts": {p: r.verdict for p, r in synth[0][0].items()}}
            chats, per_chat = self.plan.scale_chats, self.plan.scale_per_chat
            self._progress(f"scale: {chats} chats x {per_chat} turns x{k}")
            many = many_chats_scenario(chats, per_chat)
            try:
                runs = await self.trials(service, many, n=chats * per_chat, sync="last-byte",
                                         k=k, config=large_config(chats * per_chat))
                out["many_chats"] = {
                    "chats": chats, "per_chat": per_chat, "trials": k,
                    "wall_s": summary([r.wall_s for r in runs]),
                    "verdicts": verdict_counts(runs),
                    "all_evaluated": all("unknown" not in r.verdicts.values() for r in runs),
                    "ops": len(runs[0].trial.ops),
                }
            except StepNotAvailable as exc:
                out["many_chats"] = {"skipped": str(exc)}
            out["server_peak_rss_mb"] = _mb(machine.peak_rss_kib(service.instances[0].process.pid))
        out["harness_peak_rss_mb"] = _mb(machine.self_peak_rss_kib())
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
        return {"n": self.plan.wall_n, "runs": len(cold), "cold_s": summary(cold),
                "race_phase_s": summary(trial_span), "burst_s": summary(burst),
                "race_phase_share_of_cold": ratio(median(trial_span), median(cold))}


# -- the machine -------------------------------------------------------------------------

def describe_machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(),
            "cpu_model": machine.cpu_model() or platform.processor() or None,
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


def _mb(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _server_version(dsn: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return None if row is None else str(row[0])
    except psycopg.Error:
        return None


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _figures_from_history(path: Path) -> Iterator[dict[str, Any]]:
    from raceharness.core.history import loads_trials

    _, trials = loads_trials(path.read_text(encoding="utf-8"))
    for trial in trials:
        yield trial_figures(trial)
