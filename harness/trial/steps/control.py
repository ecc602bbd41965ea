"""Control of the embedded stack: a crash (kill-owner, restart-service, expire-lease) and the
database taken away (database-outage, database-down, burst-into-outage, burst-during-outage,
database-up). The harness never kills or breaks what it did not start."""

from __future__ import annotations

import time
from typing import Any

import trio

from raceharness.core.protocol import ACTIVE_STATUSES
from raceharness.core.scenario import Step
from raceharness.core.steps import Phase
from raceharness.trial.context import whole_turn
from raceharness.trial.steps.base import (
    P_DATABASE,
    P_OBSERVE,
    P_PROBE,
    P_STOP,
    Program,
    StepNotAvailable,
    step,
)
from raceharness.trial.steps.observe import final_run, snapshot


def _control(p: Program, name: str) -> Any:
    if p.ctx.control is None:
        raise StepNotAvailable(f"{name}: needs the embedded stack (the harness never kills "
                               "or breaks what it did not start)")
    return p.ctx.control


# -- a crash: the owner killed, restarted, its run reclaimed ---------------------------------

@step("kill-owner")
async def kill_owner(p: Program, call: Step) -> None:
    """SIGKILL the instance that streams the winner's run: a crash, no cleanup."""
    control, st = _control(p, "kill-owner"), p.state
    owner = 0 if st.winner is None else st.winner % len(p.ctx.targets)
    p.rec.add("invoke", "kill", P_STOP, None, {"instance": owner, "run_id": st.winner_run_id()})
    await control.kill(owner)
    p.rec.add("ok", "kill", P_STOP, None, {"instance": owner})
    p.meta["killed_instance"] = owner


@step("restart-service")
async def restart_service(p: Program, call: Step) -> None:
    """Start the killed instance again; then a turn within the lease must still get 409."""
    control = _control(p, "restart-service")
    k = p.meta.get("killed_instance", 0)
    await control.restart(k)
    await whole_turn(p.ctx, p.rec, P_PROBE, "blocked", p.state.chat_id, p.bound_s)


@step("expire-lease")
async def expire_lease(p: Program, call: Step) -> None:
    """Wait (bounded by three leases) until the dead owner's run is reclaimed."""
    p.meta["expect_reclaim"] = True
    if p.state.chat_id is None:
        raise StepNotAvailable("expire-lease: no chat yet")
    lease_s = p.ctx.settings.get("lease_s") or p.scenario.lease_s or 10.0
    await final_run(p, P_OBSERVE, p.state.chat_id, Phase.RECLAIMED, 3 * lease_s + 5,
                    p.state.winner_run_id())


# -- run inserts refused ---------------------------------------------------------------------

@step("database-outage")
async def database_outage(p: Program, call: Step) -> None:
    """While run inserts fail in the database, N turns must each get 503
    A_RUN_BEGIN_FAILED: no stream, no provider call."""
    control = _control(p, "database-outage")
    n = p.ctx.config.n
    await trio.to_thread.run_sync(control.reject_run_inserts, True)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(whole_turn, p.ctx, p.rec, P_PROBE + i, f"outage{i}",
                                   p.state.chat_id, p.bound_s)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(control.reject_run_inserts, False)


# -- a real database outage: backends terminated, connections refused ------------------------

def _database_control(p: Program, name: str) -> Any:
    control = _control(p, name)
    if not control.controls_database:
        raise StepNotAvailable(f"{name}: the service runs on the DSN's own database; the "
                               "harness takes away only a database it created")
    return control


async def _take_database_down(p: Program, control: Any, at: str, **info: Any) -> None:
    p.rec.add("invoke", "database", P_DATABASE, None,
              {"action": "down", "at": at, "run_id": p.state.winner_run_id(), **info})
    p.state.database_down = True
    terminated = await trio.to_thread.run_sync(control.database_down)
    p.rec.add("ok", "database", P_DATABASE, None, {"action": "down", "terminated": terminated})


async def _outage_turns(p: Program, n: int, role: str) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(whole_turn, p.ctx, p.rec, P_PROBE + i, f"{role}{i}",
                               p.state.chat_id, p.bound_s)


@step("database-down")
async def database_down(p: Program, call: Step) -> None:
    """Postgres goes away under the service (as when it stops): every backend of its
    database is terminated and new connections are refused, until database-up."""
    control = _database_control(p, "database-down")
    await _take_database_down(p, control, "stream" if p.state.winner_run_id() else "idle")


@step("burst-into-outage")
async def burst_into_outage(p: Program, call: Step) -> None:
    """N turns at once; the harness holds each inside the gate (its run INSERT queued
    behind an uncommitted run of the harness's) until all N wait there, then takes the
    database away under them. Each must get a clean refusal: no stream, no provider call.
    The database stays down."""
    control = _database_control(p, "burst-into-outage")
    n = call.arg("n", p.ctx.config.n)
    if p.state.chat_id is None:
        raise StepNotAvailable("burst-into-outage: no chat yet")
    await trio.to_thread.run_sync(control.hold_gate, p.state.chat_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_outage_turns, p, n, "outage-gate")
            waiting = 0
            with trio.move_on_after(p.bound_s):
                while (waiting := await trio.to_thread.run_sync(  # noqa: ASYNC110 - a
                        control.gate_waiters)) < n:  # database condition: no event to await
                    await trio.sleep(0.02)
            await _take_database_down(p, control, "gate", waiting=waiting, n=n)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(control.release_gate)


@step("burst-during-outage")
async def burst_during_outage(p: Program, call: Step) -> None:
    """N turns at once while the database is down (connections refused): each must get a
    clean refusal, promptly, with no stream and no provider call."""
    if not p.state.database_down or p.state.chat_id is None:
        raise StepNotAvailable("burst-during-outage: needs a chat and the database down "
                               "(database-down or burst-into-outage first)")
    await _outage_turns(p, call.arg("n", p.ctx.config.n), "outage-down")


@step("database-up")
async def database_up(p: Program, call: Step) -> None:
    """Give the database back; then observe the chat until the service answers and no
    run of it is active (bounded by within_s), and record what was seen last."""
    control = _database_control(p, "database-up")
    p.rec.add("invoke", "database", P_DATABASE, None, {"action": "up"})
    await trio.to_thread.run_sync(control.database_up)
    p.state.database_down = False
    p.rec.add("ok", "database", P_DATABASE, None, {"action": "up"})
    chat_id = p.state.chat_id
    if chat_id is None:
        return
    within_s = call.arg("within_s")
    p.rec.add("invoke", "runs", P_OBSERVE, None,
              {"chat_id": chat_id, "phase": Phase.RECOVERED.value, "within_s": within_s})
    t0 = time.monotonic()
    status, runs = 0, None
    with trio.move_on_after(within_s):
        while True:
            try:
                with trio.fail_after(p.bound_s):
                    status, runs = await p.ctx.service.runs(chat_id)
            except Exception:  # noqa: BLE001 - no answer yet: keep polling within the bound
                status, runs = 0, None
            if status == 200 and runs is not None and not any(
                    r.get("status") in ACTIVE_STATUSES for r in runs):
                break
            await trio.sleep(0.05)  # polling the service's own view: no event to wait on
    p.rec.add("ok" if status else "info", "runs", P_OBSERVE, None, {
        "phase": Phase.RECOVERED.value, "status": status, "runs": runs or [],
        "waited_ms": round((time.monotonic() - t0) * 1000)})
    await snapshot(p, chat_id, Phase.RECOVERED)
