"""The service fails closed and recovers: during and after a database outage, after its owner
died, after a storm of dropped clients: ``outage/fails-closed``, ``outage/runs-settle``,
``recovery/lease-reclaims`` and ``storm/runs-end``, properties only some scenarios check. Pure.

Evidence conventions (recorded by ``program.py``):

- Database outages: ``turn`` ops whose role starts with ``outage`` were sent while the database
  was failing (``outage{i}``: run inserts rejected; ``outage-gate{i}``: inside the gate when the
  database went away; ``outage-down{i}``: while it was away). ``database`` ops: invoke
  ``{action: down|up, at?, run_id?}``, ok ``{action, terminated?}``. ``runs`` op, phase
  ``recovered`` (``database-up``): invoke ``{chat_id, within_s}``; ok/info ``{status, runs,
  waited_ms}``, the last answer of a bounded wait for the chat to have no active run; a database
  snapshot labelled ``recovered`` may follow.
- A dead owner (``kill-owner``, ``restart-service``, ``expire-lease``): ``turn`` ops with role
  ``blocked`` were sent within the dead owner's lease (each must get the target's conflict
  status, ``meta.conflict.status``; absent: 409); the ``run`` op with phase ``reclaimed``
  is the chat's latest run after a wait bounded by three leases.
- A disconnect storm (``disconnect-storm``): ``turn`` ops with role ``storm``, one per chat, whose
  clients dropped mid-way; a ``run`` op with phase ``storm`` per chat after it;
  ``meta.storm_expect`` is the end ``AUTONOMOUS_RUNS`` implies (``aborted`` or ``succeeded``),
  ``meta.storm_calls_open`` the nonces of provider calls still open after the wait
  (``meta.storm_wait_s``).
"""

from __future__ import annotations

from raceharness.core.checks.base import (
    ACTIVE,
    FRAME_STATUS,
    TERMINAL_FRAMES,
    CheckResult,
    _int,
    _list,
    conflict_answer,
)
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import _winner_run_id, find_winner, turns
from raceharness.core.history import Trial


@check("outage/fails-closed", scope="scenario", evidence=("turns", "provider"),
       summary="during a database failure, turns get 503 and never stream")
def outage_fails_closed(trial: Trial) -> CheckResult:
    prop = "outage/fails-closed"
    outage = [t for t in turns(trial) if str(t.invoke.get("role", "")).startswith("outage")]
    if not outage:
        return CheckResult(prop, "unknown", "no turn was sent during a database failure")
    # A 200 is a stream without a run even when it never ended (the turn's bound passed).
    bad = [t for t in outage if t.got_200 or (t.outcome == "ok" and (
        t.status != 503 or t.code != "A_RUN_BEGIN_FAILED"))]
    if bad:
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(outage)} turns during the "
                           "database failure were not 503 A_RUN_BEGIN_FAILED: "
                           + "; ".join(f"op {t.index}: {t.status} runId={t.run_id}"
                                       for t in bad[:5]), tuple(t.index for t in bad))
    nonces = {t.invoke.nonce for t in outage}
    if trial.provider is not None:
        calls = [c for c in trial.provider if c.nonce in nonces]
        if calls:
            return CheckResult(prop, "invalid", f"{len(calls)} provider call(s) for turns "
                               "that could not begin")
    unanswered = [t for t in outage if t.outcome != "ok"]
    if unanswered:
        return CheckResult(prop, "unknown", f"{len(unanswered)} turns got no answer",
                           tuple(t.index for t in unanswered))
    if trial.provider is None:
        return CheckResult(prop, "unknown", "503s as expected, but without provider access "
                           "nothing proves no provider call")
    return CheckResult(prop, "valid", f"all {len(outage)} turns got 503 A_RUN_BEGIN_FAILED, "
                       "no provider call", tuple(t.index for t in outage))


@check("outage/runs-settle", scope="scenario", evidence=("racers", "outages", "runs", "db"),
       summary="after a database outage, no run is left active")
def outage_runs_settle(trial: Trial) -> CheckResult:
    prop = "outage/runs-settle"
    changes = trial.completions("database")
    downs = [inv for inv, _ in changes if inv.get("action") == "down"]
    ups = [comp for inv, comp in changes if inv.get("action") == "up"
           and comp is not None and comp.type == "ok"]
    if not downs:
        return CheckResult(prop, "unknown", "the database was never taken away")
    if not ups:
        return CheckResult(prop, "unknown", "the database was never given back")
    seen = [(inv, comp) for inv, comp in trial.completions("runs")
            if inv.get("phase") == "recovered"]
    if not seen:
        return CheckResult(prop, "unknown", "the chat was not observed after the database "
                           "came back")
    inv, comp = seen[-1]
    if comp is None or comp.type != "ok":
        return CheckResult(prop, "unknown", "the service gave no answer at all after the "
                           "database came back", ((comp or inv).index,))
    status = _int(comp.get("status"), f"op {comp.index}: status")
    if status != 200:
        return CheckResult(prop, "invalid", f"{inv.get('within_s')} s after the database came "
                           f"back the service still answered {status}: it did not recover",
                           (comp.index,))
    statuses: dict[str, str | None] = {}
    for row in _list(comp.get("runs"), f"op {comp.index}: runs"):
        if not isinstance(row, dict):
            raise TypeError(f"op {comp.index}: runs[]={row!r} is not an object")
        statuses[str(row.get("id"))] = row.get("status")
    problems = [f"run {rid} still {st} after the database came back"
                for rid, st in statuses.items() if st in ACTIVE]
    ops = {comp.index} if problems else set()
    snap = trial.db_snapshot("recovered")
    if snap is not None:
        problems += [f"db: run {r.id} still {r.status}" for r in snap.runs if r.status in ACTIVE
                     and r.id not in statuses]
    winner = find_winner(turns(trial, "racer"))
    in_flight = ""
    if winner is not None and winner.run_id is not None:  # the run streaming when it went
        final = statuses.get(winner.run_id)
        frame = winner.terminal
        done = winner.completion is not None and winner.completion.get("done") is True
        if frame not in TERMINAL_FRAMES or not done:
            problems.append(f"the in-flight stream (op {winner.index}) did not end cleanly "
                            f"during the outage: terminal frame {frame!r}, [DONE] {done}")
            ops.add(winner.index)
        elif final is None:
            problems.append(f"the in-flight run {winner.run_id} is not among the chat's runs")
            ops.add(comp.index)
        elif final not in ACTIVE and FRAME_STATUS[frame] != final:
            problems.append(f"the in-flight stream (op {winner.index}) ended {frame!r} but its "
                            f"run {winner.run_id} was recorded {final!r}")
            ops |= {winner.index, comp.index}
        in_flight = f"; the in-flight run {winner.run_id} ended {final} (stream: {frame})"
    if problems:
        return CheckResult(prop, "invalid", "; ".join(problems[:5]), tuple(sorted(ops)))
    return CheckResult(prop, "valid", f"{comp.get('waited_ms')} ms after the database came back "
                       f"no run of the chat was active{in_flight}", (comp.index,))


@check("recovery/lease-reclaims", scope="scenario",
       evidence=("racers", "turns", "runs", "meta"),
       summary="a dead owner's run holds the chat only until its lease expires")
def lease_reclaims(trial: Trial) -> CheckResult:
    prop = "recovery/lease-reclaims"
    run_id = _winner_run_id(trial)
    if run_id is None:
        return CheckResult(prop, "unknown", "no run was live when its owner died")
    blocked = turns(trial, "blocked")
    conflict = conflict_answer(trial.meta).status
    bad_block = [t for t in blocked if t.outcome == "ok" and t.status != conflict]
    if bad_block:
        return CheckResult(prop, "invalid", f"within the lease of the dead owner's run a new "
                           f"turn got {bad_block[0].status}, not {conflict} (the chat must stay "
                           "blocked until the lease expires)", (bad_block[0].index,))
    if not any(t.outcome == "ok" for t in blocked):
        return CheckResult(prop, "unknown", "no turn within the lease got an answer",
                           tuple(t.index for t in blocked))
    finals = [(inv, comp) for inv, comp in trial.completions("run")
              if inv.get("phase") == "reclaimed"]
    if not finals or finals[-1][1] is None or finals[-1][1].type != "ok":
        return CheckResult(prop, "unknown", "the dead owner's run was not observed")
    comp = finals[-1][1]
    if _int(comp.get("status"), f"op {comp.index}: status") != 200:
        return CheckResult(prop, "unknown", f"/run answered {comp.get('status')}: the dead "
                           "owner's run was not observed", (comp.index,))
    run = comp.get("run")
    if not isinstance(run, dict) or run.get("id") != run_id:
        return CheckResult(prop, "unknown", f"/run shows another run than {run_id}",
                           (comp.index,))
    if run.get("status") in ACTIVE:
        return CheckResult(prop, "invalid", f"the dead owner's run {run_id} is still "
                           f"{run.get('status')} three leases later: nothing reclaims it",
                           (comp.index,))
    if run.get("status") != "aborted":
        return CheckResult(prop, "invalid", f"the dead owner's run {run_id} ended "
                           f"{run.get('status')!r}, expected aborted", (comp.index,))
    return CheckResult(prop, "valid", f"blocked within the lease, then {run_id} aborted "
                       f"({run.get('error')!r})", (comp.index,))


@check("storm/runs-end", scope="scenario", evidence=("turns", "runs", "meta"),
       summary="after many clients drop, every run ends as `AUTONOMOUS_RUNS` says")
def storm_runs_end(trial: Trial) -> CheckResult:
    prop = "storm/runs-end"
    expect = trial.meta.get("storm_expect")
    finals = [(inv, comp) for inv, comp in trial.completions("run")
              if inv.get("phase") == "storm"]
    if expect is None or not finals:
        return CheckResult(prop, "unknown", "no disconnect storm was observed")
    # The storm's run id per chat, when its client saw the start frame before dropping.
    known = {str(t.invoke.get("chat_id")): t.run_id for t in turns(trial, "storm")
             if t.outcome == "ok" and t.run_id is not None}
    unknown, bad = [], []
    for inv, comp in finals:
        if comp is None or comp.type != "ok" or comp.get("status") != 200:
            unknown.append((comp or inv).index)
            continue
        run, message = comp.get("run"), comp.get("message")
        if not isinstance(run, dict):
            bad.append((comp.index, f"chat {inv.get('chat_id')}: no run at all"))
        elif run.get("status") in ACTIVE:
            bad.append((comp.index, f"run {run.get('id')} still {run.get('status')}"))
        elif known.get(str(inv.get("chat_id"))) not in (None, run.get("id")):
            bad.append((comp.index, f"chat {inv.get('chat_id')}: the latest run is not the "
                        f"storm's run {known[str(inv.get('chat_id'))]}"))
        elif expect == "aborted" and run.get("id") in known.values() \
                and run.get("status") != "aborted":
            bad.append((comp.index, f"run {run.get('id')} ended {run.get('status')!r} although "
                        "its client dropped mid-stream with AUTONOMOUS_RUNS=false"))
        elif expect == "succeeded" and run.get("status") != "succeeded":
            bad.append((comp.index, f"run {run.get('id')} ended {run.get('status')!r} with "
                        "AUTONOMOUS_RUNS=true (expected it to finish unread)"))
        elif expect == "succeeded" and trial.meta.get("expected_content") is not None and (
                not isinstance(message, dict)
                or message.get("content") != trial.meta["expected_content"]):
            bad.append((comp.index, f"run {run.get('id')} persisted "
                        f"{(message or {}).get('content')!r}, not the whole answer"))
    still = set(trial.meta.get("storm_calls_open") or ())
    if expect == "aborted" and still:
        calls = [op.index for op in trial.ops
                 if op.type == "invoke" and op.f == "turn" and op.nonce in still]
        bad.append((calls[0] if calls else finals[0][0].index,
                    f"{len(still)} provider call(s) still streaming "
                    f"{trial.meta.get('storm_wait_s', '?')}s after their clients dropped "
                    "(the stop never reached the provider)"))
    if bad:
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(finals)} runs: "
                           + "; ".join(text for _, text in bad[:5]),
                           tuple(i for i, _ in bad))
    if unknown:
        return CheckResult(prop, "unknown", f"{len(unknown)} chats could not be observed",
                           tuple(unknown))
    return CheckResult(prop, "valid", f"all {len(finals)} runs ended "
                       + ("succeeded, persisted in full" if expect == "succeeded"
                          else "aborted (or never started)"),
                       tuple(c.index for _, c in finals if c is not None))
