"""One trial of a scenario: its steps (``steps/``, dispatched by name through the registry),
then the drain and the cleanup; the evidence returned as a :class:`Trial`.

The end of a trial is owned here, in two passes over disjoint runs, so that it stops no run
twice and leaves none running even when the steps failed or were cancelled: the cleanup
(recorded in the history) lists each of the trial's chats and stops every run still active
there; then :func:`stop_leftovers` stops the runs the racers started that nothing has settled
(``TrialContext.settled_runs``: a /stop of the trial was answered, or the cleanup listed the run
as ended), and closes the racers. A run a step stopped is stopped again only by the cleanup,
and only while the service still lists it as active.

The racers' response readers live in one nursery for the whole trial, so a burst's answers keep
arriving while later steps observe, stop or disconnect. Every wait is bounded; nothing is
retried. Steps that need a capability the target lacks never run: the scenario is skipped
before its first trial (see ``suite.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from raceharness.adapters.base import AdapterError
from raceharness.core.history import Trial
from raceharness.core.scenario import Scenario, Step
from raceharness.core.steps import Phase
from raceharness.trial.context import Recorder, TrialContext, losers_fast_bound_ms
from raceharness.trial.steps import Program, StepNotAvailable, TrialState
from raceharness.trial.steps.base import ACTIVE, P_CLEANUP, stream_attr
from raceharness.trial.steps.long_hold import hold_past_s
from raceharness.trial.steps.observe import run_end_bound_s

__all__ = ["Program", "StepNotAvailable", "TrialState", "hold_past_s", "planned_wait_s",
           "run_end_bound_s", "run_scenario_trial", "stop_leftovers"]

log = logging.getLogger(__name__)


def planned_wait_s(scenario: Scenario, settings: dict[str, float], answer_s: float) -> float:
    """The waits a scenario's steps take from the service's settings (what --max-wait caps)."""
    total = 0.0
    for step in scenario.steps:
        if step.do == "wait-run-end" and step.arg("within_s", None) is None:
            total += run_end_bound_s(settings, answer_s)
        elif step.do == "hold-past" and {"heartbeat_s", "lease_s"} <= settings.keys():
            total += hold_past_s(settings, step.arg("intervals"))
        elif step.do == "expire-lease" and "lease_s" in settings:
            total += 3 * settings["lease_s"] + 5
    return total


async def run_scenario_trial(ctx: TrialContext, scenario: Scenario,
                             shared: dict[str, Any]) -> Trial:
    """One trial of ``scenario``: its steps, then the drain and the cleanup, then every run
    its racers may have left active stopped (shielded, bounded), even when the steps failed or
    were cancelled; returns the evidence."""
    cfg = ctx.config
    rec = Recorder(ctx.trial_no, ctx.writer)
    meta: dict[str, Any] = {
        "trial": ctx.trial_no, "seed": ctx.seed, "scenario": scenario.name, "n": cfg.n,
        "sync": cfg.sync, "losers_fast_bound_ms": losers_fast_bound_ms(cfg),
        "stop_bound_ms": cfg.stop_bound_ms, "provider_access": ctx.provider is not None,
        "db_access": ctx.db is not None, "instances": len(ctx.targets),
        # the target's answer to a turn on a held chat, as its adapter says (the checkers'
        # conflict answer); a holder field of "" means the answer cannot name the holder
        "conflict": ctx.service.adapter.conflict.meta(),
        "adapter": ctx.service.adapter.name,
        "stream_end": ctx.service.adapter.stream_end,
        "not_checkable": sorted(ctx.service.adapter.lacks),
    }
    ended = False
    try:
        trial = await _steps(ctx, scenario, shared, rec, meta)
        ended = True
        return trial
    except StepNotAvailable as exc:
        ended = True
        if ctx.writer is not None:  # not a verdict: `harness check` leaves it out
            ctx.writer.trial_start({"trial": ctx.trial_no, "skipped": str(exc)})
        raise
    finally:
        if not ended and ctx.writer is not None:  # cut off (Ctrl-C, a crash): say so
            ctx.writer.trial_start({"trial": ctx.trial_no, "interrupted": True})
        with trio.CancelScope(shield=True):
            await stop_leftovers(ctx)


async def _steps(ctx: TrialContext, scenario: Scenario, shared: dict[str, Any], rec: Recorder,
                 meta: dict[str, Any]) -> Trial:
    provider = ctx.provider
    ledger_start = len(provider.calls) if provider is not None else 0
    if provider is not None:
        provider.reset()
        provider.mode_for = lambda nonce: "finish"
    if ctx.writer is not None:
        ctx.writer.trial_start(meta)
    unavailable: StepNotAvailable | None = None
    async with trio.open_nursery() as readers:
        state = TrialState(readers=readers)
        program = Program(ctx, scenario, rec, meta, state, shared)
        try:
            await program.run()
        except StepNotAvailable as exc:  # re-raised outside the nursery, not in a group
            unavailable = exc
        finally:
            ctx.racers = [*state.racers, *([state.holder] if state.holder else [])]
            with trio.CancelScope(shield=True):
                if state.database_down:  # a step failed with the database away: give it back
                    await trio.to_thread.run_sync(ctx.control.database_up)
                    state.database_down = False
                await program.perform(Step("drain"))
                await _cleanup(program)
            readers.cancel_scope.cancel()
    if unavailable is not None:
        raise unavailable
    meta["chat_id"] = state.chat_id
    meta["ended"] = True  # a history trial without it was cut off (history.py)
    if ctx.writer is not None:
        ctx.writer.trial_start(meta)  # the completed meta: chat, release instant, spread
    trial = Trial(meta=meta, ops=rec.ops,
                  provider=provider.ledger(ledger_start) if provider is not None else None,
                  db=state.snapshots if ctx.db is not None else None)
    if ctx.writer is not None:
        ctx.writer.provider(ctx.trial_no, trial.provider)
        ctx.writer.db(ctx.trial_no, trial.db)
    return trial


async def _cleanup(program: Program) -> None:
    """Record what the service lists for each of the trial's chats (phase ``cleanup``: the
    evidence that every run the trial saw is one the service reports), then stop every run
    still active there (bounded; recorded). A run listed as ended, or stopped here, is
    settled: :func:`stop_leftovers` does not stop it again."""
    ctx, st = program.ctx, program.state
    if not ctx.service.adapter.has_runs():
        return
    chats = [c for c in [st.chat_id, *st.chats] if c]
    with trio.move_on_after(10):
        for chat_id in chats:
            program.rec.add("invoke", "runs", P_CLEANUP, None,
                            {"chat_id": chat_id, "phase": Phase.CLEANUP.value})
            try:
                status, runs, truncated = await ctx.service.runs_page(chat_id)
            except AdapterError:  # the target's wire is not what its adapter says: loudly
                raise
            except Exception as exc:  # noqa: BLE001 - best effort; the lease reclaims the rest
                program.rec.add("info", "runs", P_CLEANUP, None,
                                {"phase": Phase.CLEANUP.value, "error": type(exc).__name__})
                continue
            program.rec.add("ok", "runs", P_CLEANUP, None,
                            {"phase": Phase.CLEANUP.value, "status": status, "runs": runs or [],
                             "truncated": truncated})
            for run in runs or []:
                if not run.get("id"):
                    continue
                if run.get("status") in ACTIVE:
                    await program.stop_run(str(run["id"]), "cleanup")  # settles it if answered
                else:
                    ctx.settled_runs.add(str(run["id"]))


async def stop_leftovers(ctx: TrialContext) -> None:
    """The last pass: stop every run this trial's racers started that nothing has settled
    (the cleanup could not list it, or its /stop was not answered), bounded and best effort,
    then close every racer. Not recorded: the trial's history has ended."""
    run_ids = {r.response.stream.run_id: stream_attr(r, "chat_id") for r in ctx.racers
               if r.response.stream is not None and r.response.stream.run_id
               and r.response.stream.run_id not in ctx.settled_runs}
    if ctx.provider is not None:
        ctx.provider.release_all()
    with trio.move_on_after(5):
        for run_id, chat_id in run_ids.items():
            try:
                await ctx.service.stop(run_id=run_id, chat_id=chat_id)
            except Exception:  # noqa: BLE001 - best effort, the lease reclaims the rest
                log.warning("could not stop run %s during cleanup", run_id)
                continue
            ctx.settled_runs.add(run_id)
    for racer in ctx.racers:
        await racer.aclose()
