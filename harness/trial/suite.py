"""Running scenarios: ``harness race`` (the ``same-chat-burst`` scenario), ``harness run`` and
``harness conformance`` — trials against the embedded reference or a ``--target``, then the
checkers, the console verdict and the report folder.

A scenario needing a capability the target lacks is *skipped with its reason*, never passed.
On Ctrl-C or SIGTERM every run the harness started is stopped (bounded, shielded) before exit.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from raceharness.core.checks.base import CheckResult, worst
from raceharness.core.history import HistoryWriter, Trial
from raceharness.core.properties import check_trial
from raceharness.core.report import build_report
from raceharness.core.scenario import SERVICE_SETTINGS, Scenario, catalogue
from raceharness.net.target import Profile, Target
from raceharness.runtime import raise_on_signal, single_error
from raceharness.shell.control import CommandControl, command_control, scenario_targets
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import DbObserver, ServiceClient
from raceharness.shell.preflight import check_database, preflight_turn, server_version
from raceharness.shell.provenance import build_provenance
from raceharness.stack.embedded import EmbeddedService, embedded_postgres, reference_service
from raceharness.trial.context import RaceConfig, TrialContext, losers_fast_bound_ms
from raceharness.trial.program import StepNotAvailable, planned_wait_s, run_scenario_trial

log = logging.getLogger(__name__)

# One trial of a scenario, its cleanup included (program.py): what ``harness race``, ``run``,
# ``conformance`` and ``harness bench`` run each trial with; the checkers are the caller's.
run_trial = run_scenario_trial

EMBEDDED_CAPABILITIES = frozenset({"provider", "db", "other-token", "service-control",
                                   "db-control", "multi-instance"})


@dataclass
class RaceOptions:
    config: RaceConfig
    trials: int | None = None     # None: each scenario's own
    n: int | None = None          # None: each scenario's own
    seed: int | None = None
    target: Target | None = None
    dsn: str | None = None
    provider_listen: tuple[str, int] | None = None
    provider_url: str | None = None
    faults: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()   # declared for a --target
    report_dir: Path | None = None
    # "off"; "lines": one line per trial (no terminal: CI logs); "live": one line kept
    # up to date on a terminal
    progress: str = "off"
    command: str = "race"
    # What the target is configured with (scenario.SERVICE_SETTINGS), as declared by the user.
    service_settings: dict[str, float] = field(default_factory=dict)
    strict: bool = False          # a skipped scenario makes the run inconclusive (exit 3)
    max_wait_s: float = 120.0     # against a target, skip a scenario that would wait longer
    # For reproduce lines: every other option that shaped the run (secrets as $ENV names,
    # paths as given), and how each scenario was named (a catalogue name or a file path).
    reproduce_flags: tuple[str, ...] = ()
    scenario_args: dict[str, str] = field(default_factory=dict)
    # Embedded only: a pooler in front of the harness's Postgres ("pgbouncer": transaction
    # pooling), which the reference reaches its database through (stack/pooler.py).
    pooler: str | None = None


@dataclass
class RaceOutcome:
    report: dict[str, Any]
    trials: list[Trial]
    results: list[dict[str, CheckResult]]
    skipped: dict[str, str] = field(default_factory=dict)


def reproduce_line(opts: RaceOptions, seed: int, trials: int | None = None,
                   scenarios: Sequence[str] = ()) -> str:
    """A command line that runs again what ran (one trial's, when ``trials=1``): the command,
    the scenarios as they were named, N, the seed, the sync mode, every other option that
    shaped the run (opts.reproduce_flags) and the faults."""
    if opts.command == "race":
        parts = ["harness race", f"--n {opts.n or opts.config.n}"]
    elif opts.command == "conformance" and trials is None:
        parts = ["harness conformance"]
    else:
        named = [opts.scenario_args.get(name, name) for name in scenarios]
        parts = [f"harness run {' '.join(named)}"]
    if opts.command != "race" and opts.n is not None:
        parts.append(f"--n {opts.n}")
    parts.append(f"--seed {seed}")
    count = trials if trials is not None else opts.trials
    if count is not None and (count != 1 or opts.command != "race"):
        parts.append(f"--trials {count}")
    if opts.config.sync != "last-byte":
        parts.append(f"--sync {opts.config.sync}")
    parts += opts.reproduce_flags
    parts += [f"--fault {f}" for f in opts.faults]
    return " ".join(parts)


def missing_capabilities(scenario: Scenario, available: frozenset[str]) -> list[str]:
    return sorted(scenario.requires - available)


async def run_race(opts: RaceOptions) -> RaceOutcome:
    """``harness race``: the same-chat-burst scenario with the command line's N and trials."""
    opts = replace(opts, command="race", n=opts.n or opts.config.n,
                   trials=opts.trials or 1)
    return await run_scenarios(opts, [catalogue()["same-chat-burst"]])


async def run_scenarios(opts: RaceOptions, scenarios: Sequence[Scenario]) -> RaceOutcome:
    try:
        return await _run(opts, scenarios)
    except BaseExceptionGroup as group:
        raise single_error(group) from group


async def _run(opts: RaceOptions, scenarios: Sequence[Scenario]) -> RaceOutcome:
    base_seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(base_seed)
    writer_file = None
    if opts.report_dir is not None:
        opts.report_dir.mkdir(parents=True, exist_ok=True)
        writer_file = open(opts.report_dir / "history.jsonl", "w", encoding="utf-8")  # noqa: SIM115, ASYNC230 - line-buffered history writes
    writer = HistoryWriter(writer_file) if writer_file is not None else None
    trials: list[Trial] = []
    results: list[dict[str, CheckResult]] = []
    skipped: dict[str, str] = {}
    embedded = opts.target is None
    available = EMBEDDED_CAPABILITIES if embedded else _target_capabilities(opts)
    adapter = (opts.target.profile if opts.target is not None else Profile()).adapter
    available |= adapter.provides | ({"client-chat-ids"} if adapter.client_chat_ids
                                     else frozenset())
    not_checkable: dict[str, str] = {}
    server: dict[str, str | None] = {}  # the target's version, as its adapter reads it
    provenance = build_provenance({"run": base_seed})  # the code, date and machine at start
    try:
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            await nursery.start(raise_on_signal)
            provider: FakeProvider | None = None
            if embedded or opts.provider_listen is not None:
                provider = FakeProvider()
                host, port = opts.provider_listen or ("127.0.0.1", 0)
                await nursery.start(provider.serve, host, port)
            if not embedded:  # no verdict on a set-up that cannot give one (preflight.py)
                assert opts.target is not None
                if opts.dsn:
                    await trio.to_thread.run_sync(check_database, opts.dsn)
                await preflight_turn(opts.target, provider, opts.provider_url,
                                     opts.config.answer_timeout_s)
                server["version"], server["warning"] = await server_version(opts.target)
                if server["warning"]:
                    print(f"warning: {server['warning']}", file=sys.stderr, flush=True)
            cluster = await stack.enter_async_context(
                embedded_postgres(pooler=opts.pooler)) if embedded else None
            if writer is not None:
                writer.header({"target": "embedded" if embedded else opts.target.base_url,  # type: ignore[union-attr]
                               "command": opts.command, "n": opts.n, "trials": opts.trials,
                               "sync": opts.config.sync, "faults": list(opts.faults),
                               "seed": base_seed, "scenarios": [s.name for s in scenarios],
                               "reproduce_flags": list(opts.reproduce_flags),
                               "scenario_args": opts.scenario_args,
                               "reproduce": reproduce_line(
                                   opts, base_seed, scenarios=[s.name for s in scenarios])})
            t0 = time.monotonic()
            for k, scenario in enumerate(scenarios, 1):
                have = available | ({"autonomous-runs"} if embedded and scenario.autonomous_runs
                                    else {"disconnect-stops"} if embedded else frozenset())
                missing = missing_capabilities(scenario, have)
                if missing:
                    skipped[scenario.name] = "needs " + ", ".join(
                        f"{m} ({_capability_hint(m)})" for m in missing)
                    continue
                checked = [p for p in scenario.properties if p not in adapter.lacks]
                not_checkable.update({p: adapter.lacks[p] for p in scenario.properties
                                      if p in adapter.lacks})
                if not checked:
                    skipped[scenario.name] = (f"adapter {adapter.name} can check none of its "
                                              "properties")
                    continue
                settings, why_not = scenario_settings(opts, scenario, embedded)
                if why_not:
                    skipped[scenario.name] = why_not
                    continue
                async with AsyncExitStack() as per_scenario:
                    control: EmbeddedService | CommandControl | None
                    if embedded:
                        assert provider is not None and cluster is not None
                        service: EmbeddedService = await per_scenario.enter_async_context(
                            reference_service(cluster, opts.provider_url or provider.base_url,
                                              faults=opts.faults,
                                              autonomous_runs=scenario.autonomous_runs,
                                              lease_s=scenario.lease_s,
                                              instances=scenario.instances,
                                              provider_timeout_s=scenario.provider_timeout_s,
                                              heartbeat_s=scenario.heartbeat_s,
                                              server=_server_for(opts, scenario)))
                        targets, control = service.targets, service
                        dsn: str | None = service.dsn
                    else:
                        assert opts.target is not None
                        # [control] (shell/control.py): the instances the scenario's
                        # requests go to, and the commands that break and then heal them
                        targets, dsn = scenario_targets(opts.target, scenario), opts.dsn
                        control = command_control(opts.target, opts.report_dir, scenario.name,
                                                  opts.service_settings)
                        if control is not None:  # heals after it, also on failure and Ctrl-C
                            per_scenario.push_async_exit(control.heal_on_exit)
                    services = [ServiceClient(t) for t in targets]
                    for svc in services:
                        per_scenario.push_async_callback(svc.aclose)
                    n = opts.n or scenario.n
                    db = DbObserver(dsn, limiter_size=max(8, n)) if dsn else None
                    if db is not None and embedded:
                        await trio.to_thread.run_sync(db.check)
                    shared: dict[str, Any] = {}
                    count = opts.trials or scenario.trials
                    try:
                        for i in range(1, count + 1):
                            started = time.monotonic()
                            seed = base_seed if not trials else rng.randrange(1 << 32)
                            ctx = TrialContext(
                                target=targets[0], config=replace(opts.config, n=n),
                                provider=provider, db=db, service=services[0],
                                trial_no=len(trials), seed=seed, writer=writer,
                                targets=targets, services=services, control=control,
                                settings=settings)
                            trial = await run_trial(ctx, scenario, shared)
                            trials.append(trial)
                            results.append(check_trial(trial, checked))
                            _progress(opts, f"scenario {k}/{len(scenarios)} {scenario.name} "
                                      f"trial {i}/{count}", results[-1],
                                      time.monotonic() - started, time.monotonic() - t0)
                    except StepNotAvailable as exc:
                        skipped[scenario.name] = str(exc)
            if opts.progress == "live":
                print(file=sys.stderr)
            nursery.cancel_scope.cancel()
    finally:
        if writer_file is not None:
            writer_file.close()
    return _outcome(opts, scenarios, base_seed, trials, results, skipped, not_checkable,
                    server, provenance)


def scenario_settings(opts: RaceOptions, scenario: Scenario, embedded: bool
                      ) -> tuple[dict[str, float], str | None]:
    """The service settings a scenario's trials run with, or why it cannot run. On the
    embedded stack they are the scenario's own (the reference is started with them); against
    a target, the declared ones — a setting the scenario assumes that was not declared skips
    it, and so does a wait over ``--max-wait`` (a 300 s provider timeout makes provider-stall
    wait 455 s)."""
    if embedded:
        return scenario.assumes, None
    declared = opts.service_settings
    undeclared = [name for name in scenario.assumes if name not in declared]
    if undeclared:
        return {}, "assumes " + "; ".join(
            f"{SERVICE_SETTINGS[name][1]} (declare it with {SERVICE_SETTINGS[name][0]} S or "
            f"[service] {name} in the profile)" for name in undeclared)
    settings = {name: declared[name] for name in scenario.assumes}
    wait = planned_wait_s(scenario, settings, opts.config.answer_timeout_s)
    if wait > opts.max_wait_s:
        shown = ", ".join(f"{name} = {value:g}" for name, value in settings.items())
        return {}, (f"would wait {wait:.0f} s for the declared {shown}, over --max-wait "
                    f"{opts.max_wait_s:g} s")
    return settings, None


def _server_for(opts: RaceOptions, scenario: Scenario) -> str:
    """The embedded reference's HTTP server: hypercorn when a burst speaks HTTP/2 (uvicorn,
    the default, serves HTTP/1.1 only)."""
    modes = {opts.config.sync, *(step.arg("sync", None) for step in scenario.steps)}
    return "hypercorn" if "h2-single-packet" in modes else "uvicorn"


def _target_capabilities(opts: RaceOptions) -> frozenset[str]:
    have = set(opts.capabilities)
    if opts.provider_listen is not None:
        have.add("provider")
    if opts.dsn:
        have.add("db")
    if opts.target is not None and opts.target.other_token:
        have.add("other-token")
    if opts.target is not None and opts.target.profile.control is not None:
        have |= opts.target.profile.control.capabilities()  # [control]: its commands
    return frozenset(have)


def _capability_hint(name: str) -> str:
    from raceharness.core.scenario import CAPABILITIES

    return CAPABILITIES.get(name, name)


def _progress(opts: RaceOptions, where: str, result: dict[str, CheckResult], took_s: float,
              total_s: float) -> None:
    """One trial done: ``scenario 3/23 burst-waves trial 4/8 valid 0.4 s``, the faults named.
    Without a terminal, a line per trial (CI logs show a run's progress as it goes); on one, a
    single live line, cleared first so it never glues onto a log line."""
    if opts.progress == "off":
        return
    verdict = worst(r.verdict for r in result.values())
    faults = f" [fault {', '.join(opts.faults)}]" if opts.faults else ""
    line = f"{where} {verdict} {took_s:.1f} s{faults}"
    if opts.progress == "live":
        print(f"\r\x1b[K{line} ({total_s:.0f} s in all)", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _outcome(opts: RaceOptions, scenarios: Sequence[Scenario], base_seed: int,
             trials: list[Trial], results: list[dict[str, CheckResult]],
             skipped: dict[str, str], not_checkable: dict[str, str] | None = None,
             server: dict[str, str | None] | None = None,
             provenance: dict[str, Any] | None = None) -> RaceOutcome:
    names = [s.name for s in scenarios]
    config = {"command": opts.command, "scenarios": names, "n": opts.n,
              "trials": opts.trials, "seed": base_seed, "sync": opts.config.sync,
              "faults": list(opts.faults),
              "target": "embedded" if opts.target is None else opts.target.base_url,
              "provider_access": opts.target is None or opts.provider_listen is not None,
              "db_access": opts.target is None or opts.dsn is not None,
              "losers_fast_bound_ms": losers_fast_bound_ms(
                  replace(opts.config, n=opts.n or opts.config.n))}
    report = build_report(trials, results, config=config,
                          reproduce=reproduce_line(opts, base_seed, scenarios=names))
    for summary in report["trials"]:
        scenario = summary.get("scenario") or names[0]
        summary["reproduce"] = reproduce_line(opts, summary["seed"], trials=1,
                                              scenarios=[scenario])
    report["scenarios"] = {
        s.name: {"summary": s.summary,
                 "skipped": skipped.get(s.name),
                 "trials": sum(1 for t in trials if t.meta.get("scenario") == s.name),
                 "verdict": _scenario_verdict(s.name, trials, results, skipped)}
        for s in scenarios}
    if not trials:
        report["verdict"], report["exit_code"] = "unknown", 3
    # properties the target's adapter gives no evidence for: not checked, each with why
    report["not_checkable"] = dict(not_checkable or {})
    report["adapter"] = (opts.target.profile.adapter.describe() if opts.target is not None
                         else {"name": "ai-chat"})
    if server and server.get("version"):
        report["adapter"]["server_version"] = server["version"]
    if server and server.get("warning"):
        report["adapter"]["warning"] = server["warning"]
    if provenance is not None:
        report["provenance"] = provenance
    report["strict"] = opts.strict
    if opts.strict and (skipped or not_checkable) and report["exit_code"] == 0:
        report["verdict"], report["exit_code"] = "unknown", 3  # not tested is not passed
    if opts.report_dir is not None:
        from raceharness.render import write_reports

        write_reports(opts.report_dir, report, trials)
    return RaceOutcome(report, trials, results, skipped)


def _scenario_verdict(name: str, trials: list[Trial], results: list[dict[str, CheckResult]],
                      skipped: dict[str, str]) -> str:
    if name in skipped:
        return "skipped"
    verdicts = [r.verdict for t, res in zip(trials, results, strict=True)
                if t.meta.get("scenario") == name for r in res.values()]
    return worst(verdicts)
