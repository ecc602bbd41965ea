"""``harness race``: K trials against the embedded reference or a ``--target``, then the
checkers, the console verdict and the report folder.

On Ctrl-C or SIGTERM every run the harness started is stopped (bounded, shielded) before exit.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from harness.checkers import SINGLE_CHAT_RACE, CheckResult, check_trial
from harness.embedded import embedded_stack
from harness.engine import RaceConfig, TrialContext, run_trial
from harness.fake_provider import FakeProvider
from harness.history import HistoryWriter, Trial
from harness.observe import DbObserver, ServiceClient
from harness.report import build_report
from harness.target import Target

log = logging.getLogger(__name__)


@dataclass
class RaceOptions:
    config: RaceConfig
    trials: int = 1
    seed: int | None = None
    target: Target | None = None
    dsn: str | None = None
    provider_listen: tuple[str, int] | None = None
    provider_url: str | None = None
    faults: tuple[str, ...] = ()
    report_dir: Path | None = None
    progress: bool = False


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the runs started were stopped, the reports so far kept."""


async def _raise_on_signal(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            raise Interrupted(signal.Signals(signum).name)


@dataclass
class RaceOutcome:
    report: dict[str, Any]
    trials: list[Trial]
    results: list[dict[str, CheckResult]]


def reproduce_line(opts: RaceOptions, seed: int, trials: int | None = None) -> str:
    parts = ["harness race", f"--n {opts.config.n}", f"--seed {seed}"]
    if (trials or opts.trials) != 1:
        parts.append(f"--trials {trials or opts.trials}")
    if opts.config.sync != "last-byte":
        parts.append(f"--sync {opts.config.sync}")
    if opts.target is not None:
        parts.append(f"--target {opts.target.base_url} --token $HARNESS_TOKEN")
    parts += [f"--fault {f}" for f in opts.faults]
    return " ".join(parts)


def _single(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The one meaningful error inside a nursery's group (our errors are raised one at a time)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    for kind in (Interrupted, KeyboardInterrupt):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if len(leaves) == 1 else group


async def run_race(opts: RaceOptions) -> RaceOutcome:
    try:
        return await _run_race(opts)
    except BaseExceptionGroup as group:
        raise _single(group) from group


async def _run_race(opts: RaceOptions) -> RaceOutcome:
    base_seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(base_seed)
    seeds = [base_seed] + [rng.randrange(1 << 32) for _ in range(opts.trials - 1)]
    writer_file = None
    if opts.report_dir is not None:
        opts.report_dir.mkdir(parents=True, exist_ok=True)
        writer_file = open(opts.report_dir / "history.jsonl", "w", encoding="utf-8")  # noqa: SIM115, ASYNC230 - line-buffered history writes
    writer = HistoryWriter(writer_file) if writer_file is not None else None
    trials: list[Trial] = []
    results: list[dict[str, CheckResult]] = []
    try:
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            await nursery.start(_raise_on_signal)
            provider: FakeProvider | None = None
            if opts.target is None or opts.provider_listen is not None:
                provider = FakeProvider()
                host, port = opts.provider_listen or ("127.0.0.1", 0)
                await nursery.start(provider.serve, host, port)
            target, dsn = opts.target, opts.dsn
            if target is None:
                assert provider is not None
                stack_ = await stack.enter_async_context(embedded_stack(
                    opts.provider_url or provider.base_url, faults=opts.faults))
                target, dsn = stack_.target, stack_.dsn
            db = DbObserver(dsn, limiter_size=max(8, opts.config.n)) if dsn else None
            if db is not None:
                await trio.to_thread.run_sync(db.check)
            service = ServiceClient(target)
            stack.push_async_callback(service.aclose)
            if writer is not None:
                writer.header({"target": "embedded" if opts.target is None else target.base_url,
                               "faults": list(opts.faults), "n": opts.config.n,
                               "sync": opts.config.sync, "trials": opts.trials,
                               "seed": base_seed})
            t0 = time.monotonic()
            for k, seed in enumerate(seeds):
                ctx = TrialContext(target=target, config=opts.config, provider=provider, db=db,
                                   service=service, trial_no=k, seed=seed, writer=writer)
                try:
                    trial = await run_trial(ctx)
                finally:
                    with trio.CancelScope(shield=True):
                        await _stop_leftovers(ctx)
                trials.append(trial)
                results.append(check_trial(trial, SINGLE_CHAT_RACE))
                if opts.progress:
                    verdicts = [r.verdict for r in results[-1].values()]
                    worst = "invalid" if "invalid" in verdicts else (
                        "unknown" if "unknown" in verdicts else "valid")
                    print(f"\rtrial {k + 1}/{len(seeds)}: {worst:8} "
                          f"({time.monotonic() - t0:.1f}s)", end="", file=sys.stderr, flush=True)
            if opts.progress:
                print(file=sys.stderr)
            nursery.cancel_scope.cancel()
    finally:
        if writer_file is not None:
            writer_file.close()
    config = {"n": opts.config.n, "trials": opts.trials, "seed": base_seed,
              "sync": opts.config.sync, "faults": list(opts.faults),
              "target": "embedded" if opts.target is None else opts.target.base_url,
              "provider_access": opts.target is None or opts.provider_listen is not None,
              "db_access": opts.target is None or opts.dsn is not None,
              "losers_fast_bound_ms": opts.config.losers_fast_bound_ms}
    report = build_report(trials, results, config=config,
                          reproduce=reproduce_line(opts, base_seed))
    for summary in report["trials"]:
        summary["reproduce"] = reproduce_line(opts, summary["seed"], trials=1)
    if opts.report_dir is not None:
        (opts.report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return RaceOutcome(report, trials, results)


async def _stop_leftovers(ctx: TrialContext) -> None:
    """Stop every run this trial's racers started that may still be active (bounded)."""
    run_ids = {r.response.stream.run_id for r in ctx.racers
               if r.response.stream is not None and r.response.stream.run_id}
    if ctx.provider is not None:
        ctx.provider.release_all()
    with trio.move_on_after(5):
        for run_id in run_ids:
            try:
                await ctx.service.stop(run_id=run_id)
            except Exception:  # noqa: BLE001 - best effort, the lease reclaims the rest
                log.warning("could not stop run %s during cleanup", run_id)
    for racer in ctx.racers:
        await racer.aclose()


def check_history(path: Path, properties: Sequence[str] = SINGLE_CHAT_RACE
                  ) -> tuple[dict[str, Any], list[Trial], list[dict[str, CheckResult]]]:
    from harness.history import loads_trials

    run_meta, trials = loads_trials(path.read_text(encoding="utf-8"))
    results = [check_trial(t, properties) for t in trials]
    return run_meta, trials, results
