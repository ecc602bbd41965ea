"""Control of the service and its database: a crash (kill-owner, restart-service,
expire-lease) and the database taken away (database-outage, database-down, burst-into-outage,
burst-during-outage, database-up).

``ctx.control`` is the embedded stack (stack/embedded.py ``EmbeddedService``) or, against a
``--target``, the profile's ``[control]`` commands (shell/control.py ``CommandControl``): the
harness never kills or breaks what it did not start unless told how. What each step asks of
the commands:

- ``kill-owner`` runs ``kill`` for the instance that answered the winner's stream request (the
  racers go round-robin to the instance URLs, so it is known); with several instances and no
  winner the owner is unknown: nothing is killed and the trial is cut short (its recovery
  properties unknown), never a guess.
- ``restart-service`` runs ``start`` (then waits until the instance answers); its turn must
  reach the service within the dead owner's lease, so when the restart outlasted the lease
  minus a heartbeat (the declared one, else a third of the lease) and 0.25 s, the turn is not
  sent (recovery/lease-reclaims unknown, not invalid).
- ``database-outage`` runs ``reject_run_inserts`` / ``accept_run_inserts`` when declared (only
  the run INSERTs fail: the gate's failure path, as on the embedded stack); otherwise
  ``db_down`` / ``db_up`` (the turns meet a database that is away: they must still fail
  closed, but a begin failing *at the INSERT* is then not exercised).
- ``database-down`` / ``database-up`` run ``db_down`` / ``db_up``.
- ``burst-into-outage`` is not available to commands (holding turns inside the gate takes a
  write transaction on the service's database): ``db-outage-mid-race`` is skipped, saying so.
- ``postgres-restart`` restarts the Postgres cluster itself (``pg_ctl``), which only the
  embedded stack can do, and only to a cluster it started (not a server given by a DSN): a
  control without ``postgres_restart`` (the commands) skips it, saying so. ``wait-recovered``
  then observes the chat until nothing of it is active, as ``database-up`` does.
"""

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
    log,
    step,
)
from raceharness.trial.steps.observe import final_run, snapshot


def _control(p: Program, name: str, action: str | None = None) -> Any:
    if p.ctx.control is None:
        raise StepNotAvailable(f"{name}: needs control of the service: the embedded stack, or "
                               "a [control] section in the target profile (the harness never "
                               "kills or breaks what it did not start unless told how)")
    control = p.ctx.control
    why = None if action is None else _unavailable(control, action)
    if why:
        raise StepNotAvailable(f"{name}: {why}")
    return control


def _unavailable(control: Any, action: str) -> str | None:
    """Why the control cannot do ``action`` (the embedded stack can do everything)."""
    ask = getattr(control, "unavailable", None)
    return None if ask is None else ask(action)


def _owner(p: Program) -> int | None:
    """The instance streaming the winner's run: the one its racer's request went to (the
    racers are spread over the instances round-robin). With one instance it is that one; with
    several and no winner it is unknown."""
    st, instances = p.state, len(p.ctx.targets)
    if st.winner is None:
        return 0 if instances == 1 else None
    return st.winner % instances


# -- a crash: the owner killed, restarted, its run reclaimed ---------------------------------

@step("kill-owner")
async def kill_owner(p: Program, call: Step) -> None:
    """SIGKILL the instance that streams the winner's run: a crash, no cleanup."""
    control, st = _control(p, "kill-owner", "kill"), p.state
    owner = _owner(p)
    p.rec.add("invoke", "kill", P_STOP, None, {"instance": owner, "run_id": st.winner_run_id()})
    if owner is None:
        why = (f"no racer won, so the owner among {len(p.ctx.targets)} instances is unknown: "
               "nothing was killed")
        p.rec.add("info", "kill", P_STOP, None, {"instance": None, "why": why})
        p.decided = f"kill-owner: {why}"
        return
    await control.kill(owner)
    p.rec.add("ok", "kill", P_STOP, None, {"instance": owner})
    p.meta["killed_instance"] = owner


@step("restart-service")
async def restart_service(p: Program, call: Step) -> None:
    """Start the killed instance again; then a turn within the lease must still get 409."""
    control = _control(p, "restart-service", "restart")
    k = p.meta.get("killed_instance", 0)
    p.rec.add("invoke", "restart", P_STOP, None, {"instance": k})
    await control.restart(k)
    killed = [op.time_ns for op in p.rec.ops if op.f == "kill" and op.type == "invoke"]
    since_s = (time.monotonic_ns() - killed[-1]) / 1e9 if killed else 0.0
    window_s = _lease_window_s(p)
    p.rec.add("ok", "restart", P_STOP, None, {"instance": k, "since_kill_ms": round(
        since_s * 1000), "lease_window_ms": round(window_s * 1000)})
    # A deployment's restart takes its own time (the profile's start command): past the lease
    # a 200 would be no finding, so the turn is not sent and the scenario says so. (On the
    # embedded stack the restart is the harness's own, and the turn is sent as before.)
    timed = getattr(control, "declared", None) is not None  # shell/control.py CommandControl
    if timed and since_s > window_s - LEASE_MARGIN_S:
        log.warning("restart-service: the restart took %.1f s from the kill, past the dead "
                    "owner's lease minus a heartbeat (%.1f s): no turn within the lease",
                    since_s, window_s)
        p.meta["blocked_turn"] = (f"not sent: the restart took {since_s:.1f} s from the kill, "
                                  f"past the lease minus a heartbeat ({window_s:.1f} s)")
        return
    await whole_turn(p.ctx, p.rec, P_PROBE, "blocked", p.state.chat_id, p.bound_s)


LEASE_MARGIN_S = 0.25  # a turn's way to the service's pre-check


def _lease_window_s(p: Program) -> float:
    """How long after the kill the dead owner's run is certainly still leased: the lease less
    one heartbeat (it was last renewed up to a heartbeat before the kill). Without a declared
    heartbeat, a third of the lease (the embedded stack's)."""
    declared = getattr(p.ctx.control, "declared", None) or {}
    lease_s = p.ctx.settings.get("lease_s") or p.scenario.lease_s or 10.0
    heartbeat_s = (p.ctx.settings.get("heartbeat_s") or declared.get("heartbeat_s")
                   or p.scenario.heartbeat_s or lease_s / 3)
    return max(0.0, lease_s - heartbeat_s)


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
    A_RUN_BEGIN_FAILED: no stream, no provider call. Against a --target without the
    insert commands, the database is taken away instead (and given back after)."""
    control = _control(p, "database-outage")
    n = p.ctx.config.n
    if _unavailable(control, "reject_run_inserts") is None:
        p.meta["outage"] = "run-inserts-rejected"
        await trio.to_thread.run_sync(control.reject_run_inserts, True)
        try:
            await _outage_turns(p, n, "outage")
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(control.reject_run_inserts, False)
        return
    why = _unavailable(control, "database")
    if why or not control.controls_database:
        raise StepNotAvailable(f"database-outage: {why or 'no database of its own to fail'}; "
                               "nor control.reject_run_inserts")
    p.meta["outage"] = "database-down"
    await _take_database_down(p, control, "idle")
    await _outage_turns(p, n, "outage")
    await _give_database_back(p, control, p.bound_s)


# -- a real database outage: backends terminated, connections refused ------------------------

def _database_control(p: Program, name: str, action: str = "database") -> Any:
    control = _control(p, name, action)
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
    control = _database_control(p, "burst-into-outage", "hold_gate")
    n = call.arg("n", p.ctx.config.n)
    if p.state.chat_id is None:
        raise StepNotAvailable("burst-into-outage: no chat yet")
    await trio.to_thread.run_sync(control.hold_gate, p.state.chat_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_outage_turns, p, n, "outage-gate")
            waiting = await _wait_in_gate(p, control, n)
            await _take_database_down(p, control, "gate", waiting=waiting, n=n)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(control.release_gate)


async def _wait_in_gate(p: Program, control: Any, n: int) -> int:
    """Until ``n`` turns wait inside the gate behind ``hold_gate``'s run (bounded); how many
    do."""
    waiting = 0
    with trio.move_on_after(p.bound_s):
        while (waiting := await trio.to_thread.run_sync(  # noqa: ASYNC110 - a
                control.gate_waiters)) < n:  # database condition: no event to await
            await trio.sleep(0.02)
    return waiting


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
    await _give_database_back(p, control, call.arg("within_s"))


async def _give_database_back(p: Program, control: Any, within_s: float) -> None:
    """Give the database back; then observe the chat until the service answers and no run of
    it is active (bounded by ``within_s``), and record what was seen last."""
    p.rec.add("invoke", "database", P_DATABASE, None, {"action": "up"})
    await trio.to_thread.run_sync(control.database_up)
    p.state.database_down = False
    p.rec.add("ok", "database", P_DATABASE, None, {"action": "up"})
    await _observe_recovered(p, within_s)


async def _observe_recovered(p: Program, within_s: float) -> None:
    """Observe the chat until the service answers and no run of it is active (bounded by
    ``within_s``), and record what was seen last (phase ``recovered``) with a snapshot."""
    chat_id = p.state.chat_id
    if chat_id is None:
        return
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


# -- a real restart of the Postgres cluster under the service -------------------------------

def _postgres_control(p: Program, name: str) -> Any:
    control = _control(p, name)
    if not hasattr(control, "postgres_restart"):  # the [control] commands: none restarts it
        raise StepNotAvailable(f"{name}: the target's [control] commands cannot restart its "
                               "Postgres server; the harness restarts only a cluster its "
                               "embedded stack started")
    why = control.postgres_unavailable()
    if why:
        raise StepNotAvailable(f"{name}: {why}")
    return control


@step("postgres-restart")
async def postgres_restart(p: Program, call: Step) -> None:
    """Restart the cluster under the service for real. ``at = "gate"``: N turns are first held
    inside the gate (as burst-into-outage, behind a prepared transaction) and the server goes
    down under them. ``mode =
    "fast"`` with nothing to do while it is down is one ``pg_ctl restart -m fast``; otherwise
    ``pg_ctl stop -m MODE``, then N turns (``while_down = "turns"``) or the drain (the streams
    end, their terminal writes meet the stopped server), then ``pg_ctl start``. Every turn
    during the outage must get 503; the server is back when the step ends (also on failure)."""
    control = _postgres_control(p, "postgres-restart")
    at, while_down = call.arg("at"), call.arg("while_down")
    n = call.arg("n", p.ctx.config.n)
    if p.state.chat_id is None and (at == "gate" or while_down == "turns"):
        raise StepNotAvailable("postgres-restart: no chat yet")
    try:
        async with trio.open_nursery() as nursery:
            info: dict[str, Any] = {}
            if at == "gate":  # held by a prepared transaction: it outlives the backends, so
                # no turn slips through the gate while a fast shutdown ends them one by one
                await trio.to_thread.run_sync(
                    lambda: control.hold_gate(p.state.chat_id, prepared=True))
                nursery.start_soon(_outage_turns, p, n, "outage-gate")
                info = {"waiting": await _wait_in_gate(p, control, n), "n": n}
            where = at if at == "gate" else "stream" if p.state.winner_run_id() else "idle"
            await _restart(p, control, call, where, n, info)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(control.release_gate)  # held, if it never went down
            if control.postgres_is_down:  # a failure left it stopped: start it again
                await trio.to_thread.run_sync(control.postgres_start)


async def _restart(p: Program, control: Any, call: Step, at: str, n: int,
                   info: dict[str, Any]) -> None:
    """The restart itself, recorded as the database going down and coming back (the ``database``
    ops of conformance's outage properties)."""
    mode, while_down = call.arg("mode"), call.arg("while_down")
    how = {"via": "postgres-restart", "mode": mode}
    p.rec.add("invoke", "database", P_DATABASE, None, {
        "action": "down", "at": at, "run_id": p.state.winner_run_id(), **how,
        "while_down": while_down, **info})
    if while_down == "nothing" and mode == "fast":
        took = await trio.to_thread.run_sync(control.postgres_restart, mode)
        # one command: the server went down and came back inside it
        p.rec.add("ok", "database", P_DATABASE, None, {"action": "down", **how,
                                                      "restart_ms": round(took * 1000)})
        p.rec.add("invoke", "database", P_DATABASE, None, {"action": "up", **how})
        p.rec.add("ok", "database", P_DATABASE, None, {"action": "up", **how})
        return
    took = await trio.to_thread.run_sync(control.postgres_stop, mode)
    p.rec.add("ok", "database", P_DATABASE, None, {"action": "down", **how,
                                                  "stop_ms": round(took * 1000)})
    try:
        if while_down == "turns":
            await _outage_turns(p, n, "outage-down")
        elif while_down == "drain":
            await p.perform(Step("drain"))
    finally:
        with trio.CancelScope(shield=True):
            p.rec.add("invoke", "database", P_DATABASE, None, {"action": "up", **how})
            took = await trio.to_thread.run_sync(control.postgres_start)
            p.rec.add("ok", "database", P_DATABASE, None, {"action": "up", **how,
                                                          "start_ms": round(took * 1000)})


@step("wait-recovered")
async def wait_recovered(p: Program, call: Step) -> None:
    """Observe the chat until the service answers and no run of it is active (bounded by
    within_s): the ``recovered`` observation, after a restart and whatever ended the streams."""
    await _observe_recovered(p, call.arg("within_s"))
