"""Pure checkers for the properties only some scenarios need (beyond conformance.md §2's race
properties): a run's expected end, stale stops, foreign users and bad input.

Evidence conventions (recorded by ``program.py``):

- ``run`` op, phase ``final`` (``wait-run-end``): ok ``{status, run: {id, status, error},
  message: {status, content}}``; ``trial.meta.expect_end`` is the status the scenario expects
  and ``expected_content`` the provider's whole answer when the run must have finished.
- ``stop`` op with invoke role ``stale``: a stop aimed at the chat's previous, ended run;
  ``runs`` observations (and database snapshots) labelled ``before-stale`` / ``after-stale``
  around it.
- ``probe`` ops (invoke ``{role: foreign|bad-input, label, expect_status}``; ok ``{status}``).
  The foreign probe labelled ``stream`` (a turn started with another user's token) carries its
  nonce on its invoke (``op.nonce``); observations and snapshots labelled ``before-foreign`` /
  ``after-foreign`` surround the foreign probes.
- Database outages: ``turn`` ops whose role starts with ``outage`` were sent while the database
  was failing (``outage{i}``: run inserts rejected; ``outage-gate{i}``: inside the gate when the
  database went away; ``outage-down{i}``: while it was away). ``database`` ops: invoke
  ``{action: down|up, at?, run_id?}``, ok ``{action, terminated?}``. ``runs`` op, phase
  ``recovered`` (``database-up``): invoke ``{chat_id, within_s}``; ok/info ``{status, runs,
  waited_ms}``, the last answer of a bounded wait for the chat to have no active run; a database
  snapshot labelled ``recovered`` may follow.

Decisions (beyond ``checkers.py``'s, whose observation rules these share):

- ``stop/stale-ignored``: besides ``stopped:false`` and the newer run still active after it, the
  ended run the stale stop aimed at must keep its terminal status: its status in an
  ``after-stale`` observation is compared with ``before-stale`` (else with the status its
  stream's terminal frame implies: finish → succeeded, error → failed, abort → aborted). A
  change, or the run missing from an observation that lists every run of its chat, is
  ``invalid``; not observed, or no status to compare with, is ``unknown``.
- ``auth/foreign-denied``: besides the 403s, no side effect: no provider call carries the
  ``stream`` probe's nonce (no provider access, or a probe without a nonce: ``unknown``); no run
  listed ``after-foreign`` that was not listed ``before-foreign`` (``/runs`` answers or
  snapshots), no new message row between the two snapshots; the owner's run still active after.
  Without a before/after pair ``unknown``.
"""

from __future__ import annotations

from raceharness.core.checkers import (
    TERMINAL_FRAMES,
    CheckResult,
    _int,
    _labelled,
    _list,
    _opt_str,
    find_winner,
    turns,
)
from raceharness.core.history import DbSnapshot, Trial

ACTIVE = ("pending", "running")
# protocol.md §3/§7: the terminal frame a stream ends with and the status its run is recorded with
FRAME_STATUS = {"finish": "succeeded", "error": "failed", "abort": "aborted"}


def _winner_run_id(trial: Trial) -> str | None:
    winner = find_winner(turns(trial, "racer"))
    return None if winner is None else winner.run_id


def run_expected_end(trial: Trial) -> CheckResult:
    prop = "run/expected-end"
    expect = trial.meta.get("expect_end")
    if expect is None:
        return CheckResult(prop, "unknown", "the scenario named no expected end")
    run_id = _winner_run_id(trial)
    if run_id is None:
        return CheckResult(prop, "unknown", "no run started, so none could end")
    finals = [(inv, comp) for inv, comp in trial.completions("run")
              if inv.get("phase") == "final"]
    if not finals or finals[-1][1] is None or finals[-1][1].type != "ok":
        return CheckResult(prop, "unknown", "the run's end was not observed")
    comp = finals[-1][1]
    if _int(comp.get("status"), f"op {comp.index}: status") != 200:
        return CheckResult(prop, "unknown", f"/run answered {comp.get('status')}: the run's end "
                           "was not observed", (comp.index,))
    run, message = comp.get("run"), comp.get("message")
    if not isinstance(run, dict) or run.get("id") != run_id:
        return CheckResult(prop, "invalid", f"/run does not show the run {run_id} as the "
                           f"chat's latest (saw {run!r})", (comp.index,))
    status = run.get("status")
    if status in ACTIVE:
        return CheckResult(prop, "invalid", f"run {run_id} is still {status} after the bound",
                           (comp.index,))
    if status != expect:
        return CheckResult(prop, "invalid", f"run {run_id} ended {status!r} "
                           f"(error {run.get('error')!r}), expected {expect!r}", (comp.index,))
    content = trial.meta.get("expected_content")
    if expect == "succeeded" and content is not None:
        if not isinstance(message, dict) or message.get("status") != "completed":
            return CheckResult(prop, "invalid", f"run {run_id} succeeded but its message is "
                               f"{message!r}, not completed", (comp.index,))
        if message.get("content") != content:
            return CheckResult(prop, "invalid", f"run {run_id} persisted "
                               f"{message.get('content')!r}, the provider sent {content!r}",
                               (comp.index,))
    return CheckResult(prop, "valid", f"run {run_id} ended {status} as expected", (comp.index,))


def stale_stop_ignored(trial: Trial) -> CheckResult:
    prop = "stop/stale-ignored"
    stale = [(inv, comp) for inv, comp in trial.completions("stop") if inv.get("role") == "stale"]
    if not stale:
        return CheckResult(prop, "unknown", "no stale stop was sent")
    inv, comp = stale[-1]
    if comp is None or comp.type != "ok":
        return CheckResult(prop, "unknown", "the stale stop got no answer", (inv.index,))
    status = _int(comp.get("status"), f"op {comp.index}: status")
    target = _opt_str(inv.get("run_id"), f"op {inv.index}: run_id")
    if status != 200 or comp.get("stopped") is not False:
        return CheckResult(prop, "invalid", f"a stop aimed at the ended run {target} "
                           f"answered {status} stopped={comp.get('stopped')!r}, "
                           "expected 200 stopped:false", (comp.index,))
    winner = find_winner(turns(trial, "racer"))
    chat = None if winner is None else winner.chat
    after = [o for o in _labelled(trial, "after-stale") if o.covers(chat)]
    problems: list[str] = []
    missing: list[str] = []
    if target is not None:
        ended = _ended_status(trial, target, chat)
        shown = False
        for o in after:
            if target in o.statuses:
                shown = True
                now = o.statuses[target]
                if now in ACTIVE or (ended is not None and now != ended):
                    was = "" if ended is None else f", was {ended!r}"
                    problems.append(f"the ended run {target} is {now!r} after the stale stop "
                                    f"({o.name}){was}")
            elif o.lists_all_of(chat):
                problems.append(f"the ended run {target} is gone from {o.name} after the "
                                "stale stop")
        if not shown and not problems:
            missing.append(f"the ended run {target} was not observed after the stale stop")
        elif ended is None and not problems:
            missing.append(f"the ended run {target}'s status before the stale stop is unknown")
    else:
        missing.append("the stale stop named no run")
    if winner is None or winner.run_id is None:
        missing.append("no newer run was live to be hit by the stale stop")
    else:
        run_id = winner.run_id
        seen = [o for o in after if run_id in o.statuses or o.lists_all_of(chat)]
        for o in seen:
            now = o.statuses.get(run_id)
            if now not in ACTIVE:
                what = "gone" if run_id not in o.statuses else repr(now)
                problems.append(f"after a stop aimed at an ended run, the newer run {run_id} is "
                                f"{what} ({o.name})")
        if not seen:
            missing.append("the newer run was not observed after the stale stop")
    if problems:
        return CheckResult(prop, "invalid", "; ".join(problems[:5]), (comp.index,))
    if missing:
        return CheckResult(prop, "unknown", "; ".join(missing))
    return CheckResult(prop, "valid", f"the stale stop answered stopped:false, the ended run "
                       f"{target} kept its status and the newer run kept running", (comp.index,))


def _ended_status(trial: Trial, run_id: str, chat: str | None) -> str | None:
    """The status ``run_id`` had before the stale stop: what ``before-stale`` showed, else what
    its stream's terminal frame implies."""
    for o in _labelled(trial, "before-stale"):
        if run_id in o.statuses and o.covers(chat):
            return o.statuses[run_id]
    frames = [t.terminal for t in turns(trial) if t.run_id == run_id and t.outcome == "ok"]
    return FRAME_STATUS.get(frames[0]) if frames and frames[0] is not None else None


def _probes(trial: Trial, role: str) -> list[tuple[str, int | None, int | None, int]]:
    """(label, expected status, status or None without an answer, op index)."""
    out = []
    for inv, comp in trial.completions("probe"):
        if inv.get("role") != role:
            continue
        status = (_int(comp.get("status"), f"op {comp.index}: status")
                  if comp is not None and comp.type == "ok" else None)
        out.append((str(inv.get("label")), inv.get("expect_status"), status,
                    (comp or inv).index))
    return out


def foreign_denied(trial: Trial) -> CheckResult:
    prop = "auth/foreign-denied"
    probes = _probes(trial, "foreign")
    if not probes:
        return CheckResult(prop, "unknown", "no request was made with another user's token")
    bad = [p for p in probes if p[2] is not None and p[2] != 403]
    if bad:
        return CheckResult(prop, "invalid", "another user's token got "
                           + "; ".join(f"{label}: {status}" for label, _, status, _ in bad)
                           + " (expected 403 everywhere)", tuple(p[3] for p in bad))
    cited = tuple(p[3] for p in probes)
    winner = find_winner(turns(trial, "racer"))
    chat = None if winner is None else winner.chat
    problems, missing, ops = _foreign_side_effects(trial, chat)
    run_id = None if winner is None else winner.run_id
    after = [o for o in _labelled(trial, "after-foreign") if o.covers(chat)]
    seen = [] if run_id is None else [o for o in after
                                      if run_id in o.statuses or o.lists_all_of(chat)]
    for o in seen:
        status = o.statuses.get(str(run_id))
        if status not in ACTIVE:
            what = "gone" if run_id not in o.statuses else repr(status)
            problems.insert(0, f"after the foreign user's requests the owner's run {run_id} is "
                            f"{what}: a side effect ({o.name})")
            if o.where is not None:
                ops.add(o.where)
    if not seen:
        missing.insert(0, "the owner's run was not observed after them")
    if problems:
        return CheckResult(prop, "invalid", "; ".join(problems[:5]), tuple(sorted(ops)))
    silent = [p for p in probes if p[2] is None]
    if silent:
        return CheckResult(prop, "unknown", f"{len(silent)} foreign request(s) got no answer",
                           tuple(p[3] for p in silent))
    if missing:
        return CheckResult(prop, "unknown", f"all {len(probes)} foreign requests got 403, but "
                           + "; ".join(missing) + ": nothing proves no side effect", cited)
    return CheckResult(prop, "valid", f"all {len(probes)} foreign requests got 403, no side "
                       "effect", cited)


def _foreign_side_effects(trial: Trial, chat: str | None) -> tuple[list[str], list[str],
                                                                    set[int]]:
    """(side effects seen, evidence missing, the observations citing them) of the foreign
    ``stream`` probe and of the foreign requests as a whole."""
    problems: list[str] = []
    missing: list[str] = []
    ops: set[int] = set()
    streams = [inv for inv, _ in trial.completions("probe")
               if inv.get("role") == "foreign" and inv.get("label") == "stream"]
    nonces = {inv.nonce for inv in streams if inv.nonce is not None}
    if streams:
        if trial.provider is None:
            missing.append("no provider access to see the stream probe's provider calls")
        elif not nonces:
            missing.append("the stream probe carried no nonce")
        else:
            calls = [c.index for c in trial.provider if c.nonce in nonces]
            if calls:
                problems.append(f"{len(calls)} provider call(s) carry the foreign stream "
                                f"probe's nonce (call {', '.join(map(str, calls[:5]))})")
    before = [o for o in _labelled(trial, "before-foreign") if o.covers(chat)]
    after = [o for o in _labelled(trial, "after-foreign") if o.covers(chat)]
    compared = False
    for db in (False, True):
        was = [o for o in before if (o.where is None) == db]
        now = [o for o in after if (o.where is None) == db]
        if not was or not now:
            continue
        compared = True
        known = {run_id for o in was for run_id in o.statuses}
        for o in now:
            new = sorted(set(o.statuses) - known)
            if new:
                problems.append(f"run {', '.join(new[:3])} appeared after the foreign user's "
                                f"requests ({o.name})")
                if o.where is not None:
                    ops.add(o.where)
    was_snap = _snapshot(trial, "before-foreign", chat)
    now_snap = _snapshot(trial, "after-foreign", chat)
    if was_snap is not None and now_snap is not None:
        old = {m.id for m in was_snap.messages}
        new_messages = [m.id for m in now_snap.messages if m.id not in old]
        if new_messages:
            problems.append(f"{len(new_messages)} message row(s) appeared after the foreign "
                            "user's requests (db after-foreign snapshot)")
    if not compared:
        missing.append("no before-foreign/after-foreign observation pair shows no new run")
    return problems, missing, ops


def _snapshot(trial: Trial, label: str, chat: str | None) -> DbSnapshot | None:
    for snap in trial.db or ():
        chats = {r.chat_id for r in snap.runs} | {m.chat_id for m in snap.messages}
        if snap.label == label and (chat is None or chats <= {chat}):
            return snap
    return None


def input_rejected_cleanly(trial: Trial) -> CheckResult:
    prop = "input/rejected-cleanly"
    probes = _probes(trial, "bad-input")
    if not probes:
        return CheckResult(prop, "unknown", "no bad input was sent")
    wrong = [p for p in probes if p[2] is not None and p[2] != p[1]]
    if wrong:
        return CheckResult(prop, "invalid", "; ".join(
            f"{label}: {status}, expected {expect}" for label, expect, status, _ in wrong),
            tuple(p[3] for p in wrong))
    nonces = {op.nonce for op in trial.ops if op.f == "probe" and op.nonce}
    if trial.provider is not None:
        calls = [c for c in trial.provider if c.nonce in nonces]
        if calls:
            return CheckResult(prop, "invalid", f"{len(calls)} provider call(s) for rejected "
                               "input")
    before, after = trial.db_snapshot("before"), trial.db_snapshot("after")
    if before is not None and after is not None and (
            len(after.runs) != len(before.runs) or len(after.messages) != len(before.messages)):
        return CheckResult(prop, "invalid", f"rejected input wrote rows: runs "
                           f"{len(before.runs)}→{len(after.runs)}, messages "
                           f"{len(before.messages)}→{len(after.messages)}")
    silent = [p for p in probes if p[2] is None]
    if silent:
        return CheckResult(prop, "unknown", f"{len(silent)} bad request(s) got no answer",
                           tuple(p[3] for p in silent))
    if trial.provider is None or before is None or after is None:
        return CheckResult(prop, "unknown", "statuses are right, but without provider and "
                           "database access nothing proves no side effect")
    return CheckResult(prop, "valid", f"all {len(probes)} bad requests got their 4xx, no rows, "
                       "no provider call", tuple(p[3] for p in probes))


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


def lease_reclaims(trial: Trial) -> CheckResult:
    prop = "recovery/lease-reclaims"
    run_id = _winner_run_id(trial)
    if run_id is None:
        return CheckResult(prop, "unknown", "no run was live when its owner died")
    blocked = turns(trial, "blocked")
    bad_block = [t for t in blocked if t.outcome == "ok" and t.status != 409]
    if bad_block:
        return CheckResult(prop, "invalid", f"within the lease of the dead owner's run a new "
                           f"turn got {bad_block[0].status}, not 409 (the chat must stay "
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


SCENARIO_CHECKERS = {
    "storm/runs-end": storm_runs_end,
    "outage/fails-closed": outage_fails_closed,
    "outage/runs-settle": outage_runs_settle,
    "recovery/lease-reclaims": lease_reclaims,
    "run/expected-end": run_expected_end,
    "stop/stale-ignored": stale_stop_ignored,
    "auth/foreign-denied": foreign_denied,
    "input/rejected-cleanly": input_rejected_cleanly,
}
