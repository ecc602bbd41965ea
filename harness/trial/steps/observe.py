"""Observing the service's records: the observe and wait-run-end steps, and the observations
other steps make (one ``/runs`` look, a poll until a run has ended, the latest run polled until
it is terminal), each labelled with its :class:`Phase` and followed by a database snapshot when
the run has database access."""

from __future__ import annotations

from typing import Any

import trio

from raceharness.adapters.base import AdapterError
from raceharness.core.history import OpType
from raceharness.core.scenario import Step
from raceharness.core.steps import Phase
from raceharness.trial.steps.base import ACTIVE, P_OBSERVE, Program, StepNotAvailable, step


@step("observe")
async def observe(p: Program, call: Step) -> None:
    chat_id = p.state.chat_id
    if chat_id is None:
        raise StepNotAvailable("observe: no chat yet")
    await observe_runs(p, Phase(call.arg("phase")), chat_id)


@step("wait-run-end")
async def wait_run_end(p: Program, call: Step) -> None:
    """Until the winner's run is terminal (bounded), then record it with its message."""
    expect = call.arg("expect")
    p.meta["expect_end"] = expect
    if p.ctx.provider is not None and expect == "succeeded":
        p.meta["expected_content"] = "".join(p.ctx.provider.tokens)
    if p.state.chat_id is None:
        raise StepNotAvailable("wait-run-end: no chat yet")
    within = call.arg("within_s", None)
    if within is None:
        within = run_end_bound_s(p.ctx.settings, p.bound_s)
    await final_run(p, P_OBSERVE, p.state.chat_id, Phase.FINAL, within,
                    p.state.winner_run_id())


def run_end_bound_s(settings: dict[str, float], default_s: float) -> float:
    """How long a run may take to end on its own: past the service's provider read timeout
    (when the scenario relies on it) with a margin, else the answer bound."""
    timeout = settings.get("provider_timeout_s")
    return default_s if timeout is None else timeout * 1.5 + 5


async def observe_runs(p: Program, phase: Phase, chat_id: str) -> list[dict[str, Any]] | None:
    """One ``/runs`` answer for the chat (recorded as a ``runs`` op) and, with database
    access, a snapshot, both labelled ``phase``; returns the runs listed (None: no list)."""
    runs: list[dict[str, Any]] | None = None
    if p.ctx.service.adapter.has_runs():
        p.rec.add("invoke", "runs", P_OBSERVE, None, {"chat_id": chat_id, "phase": phase.value})
        try:
            with trio.fail_after(p.bound_s):
                status, runs, truncated = await p.ctx.service.runs_page(chat_id)
        except AdapterError:  # the target's wire is not what its adapter says: loudly
            raise
        except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
            p.rec.add("info", "runs", P_OBSERVE, None,
                      {"phase": phase.value, "error": type(exc).__name__})
        else:
            p.rec.add("ok", "runs", P_OBSERVE, None,
                      {"phase": phase.value, "status": status, "runs": runs,
                       "truncated": truncated})
    await snapshot(p, chat_id, phase)
    return runs


async def snapshot(p: Program, chat_id: str, phase: Phase) -> None:
    """With database access: the chat's rows, labelled ``phase``."""
    if p.ctx.db is not None:
        p.state.snapshots.append(await p.ctx.db.snapshot(chat_id, phase.value))


async def observe_until_ended(p: Program, chat_id: str, run_id: str, phase: Phase,
                              bound_s: float) -> None:
    """Poll ``/runs`` until ``run_id`` is listed and no longer active, or ``bound_s``
    passes; record only the last answer (a terminal write may land just after the stream
    ended, so one early look would blame a correct service). Then a database snapshot."""
    if not p.ctx.service.adapter.has_runs():
        await final_run(p, P_OBSERVE, chat_id, phase, bound_s, run_id)
        await snapshot(p, chat_id, phase)
        return
    p.rec.add("invoke", "runs", P_OBSERVE, None,
              {"chat_id": chat_id, "phase": phase.value, "run_id": run_id})
    answer: dict[str, Any] = {"phase": phase.value, "status": 0, "runs": [], "truncated": False}
    kind: OpType = "info"
    with trio.move_on_after(bound_s):
        while True:
            try:
                with trio.fail_after(p.bound_s):
                    status, runs, truncated = await p.ctx.service.runs_page(chat_id)
            except AdapterError:  # the target's wire is not what its adapter says: loudly
                raise
            except Exception as exc:  # noqa: BLE001 - no answer yet: poll within the bound
                answer["error"] = type(exc).__name__
            else:
                kind = "ok"
                answer = {"phase": phase.value, "status": status, "runs": runs or [],
                          "truncated": truncated}
                mine = [r for r in runs or [] if r.get("id") == run_id]
                if status == 200 and mine and mine[0].get("status") not in ACTIVE:
                    break
            await trio.sleep(0.05)  # polling the service's own view: no event to wait on
    p.rec.add(kind, "runs", P_OBSERVE, None, answer)
    await snapshot(p, chat_id, phase)


async def final_run(p: Program, process: int, chat_id: str, phase: Phase, bound_s: float,
                    run_id: str | None = None) -> None:
    """Poll ``/run`` until the chat's latest run is terminal (bounded); record it."""
    p.rec.add("invoke", "run", process, None,
              {"chat_id": chat_id, "phase": phase.value, "run_id": run_id})
    status, run, message = 0, None, None
    with trio.move_on_after(bound_s):
        while True:
            try:
                status, run, message = await p.ctx.service.latest(chat_id)
            except Exception:  # noqa: BLE001 - no answer: keep polling within the bound
                status = 0
            else:
                if run is None or run.get("status") not in ACTIVE:
                    break
            await trio.sleep(0.05)  # polling the service's own view: no event to wait on
    p.rec.add("ok" if status else "info", "run", process, None, {
        "phase": phase.value, "status": status, "chat_id": chat_id,
        "runs": [] if run is None else [{"id": run.get("id"), "status": run.get("status")}],
        "run": None if run is None else {k: run.get(k) for k in ("id", "status", "error")},
        "message": None if message is None else {
            "status": message.get("status"), "content": str(message.get("content"))[:2000]},
    })
