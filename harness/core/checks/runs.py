"""What the race left behind: every stream's run tracked, no loser's rows, the winner's run
stoppable, the chat released: conformance.md §2's ``race/no-untracked-run``,
``race/no-loser-writes``, ``race/winner-stoppable`` and ``race/released``. Pure.

Decisions
---------
- ``race/no-untracked-run``: the winner must be reported active by each ``held`` observation
  that covers it; every other 200 stream with a ``run_id`` (any role) must be listed by at least
  one observation of its chat, in any phase and status. Absent from an observation that lists
  every run of the chat, taken after the stream's headers came: ``invalid``; never covered by
  such an observation: ``unknown``. A 200 without ``runId`` of any role is ``invalid``. A
  provider call is accounted for when its nonce belongs to a turn of any role that got 200 with
  a ``run_id`` (that turn's run is then checked as above); contacts are not calls. An empty
  provider ledger is missing evidence (``provider``'s decisions).
- Without a winner, ``race/no-loser-writes`` is ``unknown`` (no run id to attribute the rows
  to).
- ``race/winner-stoppable``: ``/stop`` with no answer (info) is ``invalid`` (a hang), one that
  never reached the target (fail) is ``unknown``; a provider ledger without the winner's call is
  ``unknown`` (``race/winner-provider-call`` owns that failure); a provider disconnect that
  comes too late or never is reported on the stop's completion op. ``valid`` needs an
  observation after the stop (phase ``after-stop`` or ``after``) showing the run ``aborted``;
  one showing it active or otherwise ended, or one listing every run of its chat without it, is
  ``invalid``.
"""

from __future__ import annotations

from raceharness.core.checks.base import (
    _LIST_LIMIT,
    ACTIVE_RUN_STATUSES,
    DEFAULT_STOP_BOUND_MS,
    NS_PER_MS,
    CheckResult,
    _cite,
    _int,
    _listing,
    _ms,
    _number,
    _opt_bool,
)
from raceharness.core.checks.observations import Observation, _labelled, _unreported_by
from raceharness.core.checks.provider import EMPTY_LEDGER, _ledger_empty
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import Request, _ops, find_winner, stop_ops, turns
from raceharness.core.history import ProviderCall, Trial

AFTER_STOP_PHASES = ("after-stop", "after")


def _untracked_calls(trial: Trial, provider: list[ProviderCall]) -> tuple[list[str], set[int]]:
    by_nonce: dict[str, Request] = {}
    for t in turns(trial):
        if t.nonce is not None:
            by_nonce.setdefault(t.nonce, t)
    problems: list[str] = []
    ops: set[int] = set()
    for call in provider:
        if _opt_bool(call.complete, f"provider call {call.index}: complete") is False:
            continue  # a contact: no request, no run to account for
        turn = by_nonce.get(call.nonce) if call.nonce is not None else None
        if call.nonce is None:
            problems.append(f"call {call.index}: no nonce")
        elif turn is None:
            problems.append(f"call {call.index}: unknown nonce {call.nonce!r}")
        elif not turn.tracked:
            problems.append(f"call {call.index}: for op {turn.index}, which got no 200 with runId")
            ops.add(turn.index)
    return problems, ops


@check("race/no-untracked-run", scope="race",
       evidence=("racers", "turns", "runs", "db", "provider"),
       summary="every stream and every provider call belongs to a run the service reports")
def no_untracked_run(trial: Trial) -> CheckResult:
    prop = "race/no-untracked-run"
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    streams = [t for t in turns(trial) if t.outcome != "fail" and t.got_200]
    blind = [t for t in streams if t.run_id is None]
    problems = [f"op {t.index}: 200 without runId" for t in blind]
    ops = {t.index for t in blind}
    if trial.provider is not None:
        call_problems, call_ops = _untracked_calls(trial, trial.provider)
        if call_problems:
            problems.append("a provider call no tracked run accounts for: "
                            + ", ".join(call_problems[:_LIST_LIMIT]))
            ops |= call_ops
    seen_active = False
    run_id = winner.run_id if winner is not None else None
    if winner is not None and run_id is not None:
        for o in _labelled(trial, "held"):
            if not o.covers(winner.chat):
                continue
            if run_id in o.statuses:
                status = o.statuses[run_id]
                if status in ACTIVE_RUN_STATUSES:
                    seen_active = True
                    continue
            elif not o.lists_all_of(winner.chat):
                continue  # it does not show every run of the chat: it says nothing of this one
            else:
                status = None
            problems.append(f"{o.name}: winner run {run_id} "
                            f"{'absent' if status is None else status} while held")
            if o.where is not None:
                ops.add(o.where)
    uncovered: dict[str, Request] = {}
    for t in streams:
        if t.run_id is None or (winner is not None and t.index == winner.index):
            continue
        reported = _unreported_by(trial, t.run_id, t.chat, t.headers_ns)
        if isinstance(reported, Observation):
            problems.append(f"op {t.index}: runId {t.run_id} is reported by no observation: "
                            f"untracked ({reported.name} lists every run of its chat)")
            ops.add(t.index)
        elif reported is None:
            uncovered.setdefault(t.run_id, t)
    if problems:
        return CheckResult(prop, "invalid", _listing(problems), tuple(sorted(ops)))
    missing = []
    if run_id is None:
        missing.append("no winner with a runId")
    elif not seen_active:
        missing.append(f"no held-phase /runs answer or db snapshot shows winner run {run_id}")
    if uncovered:
        missing.append("no observation covers run " + ", ".join(
            f"{r} (op {t.index})" for r, t in list(uncovered.items())[:_LIST_LIMIT])
            + (f" and {len(uncovered) - _LIST_LIMIT} more" if len(uncovered) > _LIST_LIMIT
               else ""))
    if trial.provider is None:
        missing.append("no provider access")
    elif _ledger_empty(trial):
        missing.append(EMPTY_LEDGER)
    if missing:
        return CheckResult(prop, "unknown", "missing evidence: " + "; ".join(missing))
    others = len({t.run_id for t in streams} - {run_id})
    return CheckResult(prop, "valid", f"winner run {run_id} reported active while held; "
                       f"{others} other run(s) of 200 streams reported; all "
                       f"{len(trial.provider or ())} provider call(s) belong to tracked runs")


@check("race/no-loser-writes", scope="race", evidence=("racers", "db"),
       summary="losers write no rows")
def no_loser_writes(trial: Trial) -> CheckResult:
    prop = "race/no-loser-writes"
    if trial.db is None:
        return CheckResult(prop, "unknown", "no database access")
    before, after = trial.db_snapshot("before"), trial.db_snapshot("after")
    if before is None or after is None:
        absent = [label for label, s in (("before", before), ("after", after)) if s is None]
        return CheckResult(prop, "unknown", f"no {' or '.join(absent)} db snapshot")
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    if winner is None or winner.run_id is None:
        return CheckResult(prop, "unknown", "no winner with a runId to attribute the writes to")
    new_runs = {r.id for r in after.runs} - {r.id for r in before.runs}
    old_messages = {m.id for m in before.messages}
    new_roles = [m.role for m in after.messages if m.id not in old_messages]
    users, assistants = new_roles.count("user"), new_roles.count("assistant")
    if new_runs == {winner.run_id} and users == 1 and assistants == 1 and len(new_roles) == 2:
        return CheckResult(prop, "valid", f"the race added the winner's run {winner.run_id}, one "
                           "user and one assistant message")
    others = len(new_roles) - users - assistants
    extra = new_runs - {winner.run_id}
    return CheckResult(prop, "invalid", f"the race added {len(new_runs)} run(s) "
                       f"({'with' if winner.run_id in new_runs else 'without'} the winner's "
                       f"{winner.run_id}), {users} user, {assistants} assistant and {others} other "
                       "message(s); expected 1 run, 1 user, 1 assistant",
                       _ops(r for r in racers if r.run_id in extra))


@check("race/winner-stoppable", scope="race",
       evidence=("racers", "stops", "runs", "db", "provider", "meta"),
       summary="`/stop` ends the run, its stream and its provider call")
def winner_stoppable(trial: Trial) -> CheckResult:
    prop = "race/winner-stoppable"
    winner = find_winner(turns(trial, "racer"))
    if winner is None or winner.run_id is None:
        return CheckResult(prop, "unknown", "no winner with a runId")
    run_id = winner.run_id
    stops = stop_ops(trial, run_id)
    if not stops:
        return CheckResult(prop, "unknown", f"no /stop aimed at the winner's run {run_id}")
    stop, answer = stops[0]
    if answer is not None and answer.type == "fail":
        return CheckResult(prop, "unknown", f"op {answer.index}: /stop never reached the target",
                           (answer.index,))
    problems: list[str] = []
    ops: set[int] = set()
    missing: list[str] = []
    if answer is None or answer.type == "info":
        index = stop.index if answer is None else answer.index
        problems.append(f"op {index}: /stop got no answer")
        ops.add(index)
    else:
        status = _int(answer.get("status"), f"op {answer.index}: status")
        # a 2xx saying it stopped the run (an adapter maps its target's answer: LangGraph's
        # cancel is 202 with no body)
        if not 200 <= status < 300 or answer.get("stopped") is not True:
            problems.append(f"op {answer.index}: /stop answered {status} "
                            f"stopped={answer.get('stopped')!r}")
            ops.add(answer.index)
    if winner.terminal != "abort":
        problems.append(f"op {winner.index}: the winner's stream ended {winner.terminal!r}, "
                        "not 'abort'")
        ops.add(winner.index)
    aborted: list[Observation] = []
    for o in _labelled(trial, *AFTER_STOP_PHASES):
        if o.time_ns < stop.time_ns or not o.covers(winner.chat):
            continue
        if run_id in o.statuses:
            run_status = o.statuses[run_id]
            if run_status == "aborted":
                aborted.append(o)
                continue
            why = ("still active after the stop" if run_status in ACTIVE_RUN_STATUSES
                   else "not aborted after the stop")
            problems.append(f"{o.name}: run {run_id} is {run_status!r}: {why}")
        elif o.lists_all_of(winner.chat):
            problems.append(f"{o.name}: run {run_id} gone from the list of its chat after the "
                            "stop")
        else:
            continue
        if o.where is not None:
            ops.add(o.where)
    if not aborted:
        missing.append(f"no observation after the stop shows run {run_id} aborted")
    disconnect = ""
    if trial.provider is not None:
        bound_ms = _number(trial.meta.get("stop_bound_ms", DEFAULT_STOP_BOUND_MS),
                           "meta: stop_bound_ms")
        calls = [c for c in trial.provider if c.nonce == winner.nonce and winner.nonce is not None]
        late_calls = False
        for call in calls:
            gone = call.disconnected_ns
            if gone is None or gone - stop.time_ns > bound_ms * NS_PER_MS:
                late = "never" if gone is None else f"{_ms(gone - stop.time_ns)} after the stop"
                problems.append(f"the provider kept streaming: call {call.index} disconnected "
                                f"{late} (bound {bound_ms:g} ms)")
                ops.add(answer.index if answer is not None else stop.index)
                late_calls = True
        if calls and not late_calls:
            disconnect = "; provider disconnected " + _ms(max(
                (c.disconnected_ns or 0) - stop.time_ns for c in calls)) + " after the stop"
        elif not calls:
            missing.append("no provider call for the winner to see the disconnect of")
    else:
        missing.append("no provider access to see the provider disconnect")
    if problems:
        return CheckResult(prop, "invalid", _listing(problems), tuple(sorted(ops)))
    if missing:
        return CheckResult(prop, "unknown", "stop answered stopped:true and the stream ended "
                           "abort, but " + "; ".join(missing))
    return CheckResult(prop, "valid", f"/stop answered stopped:true, the stream ended "
                       f"abort{disconnect}; {aborted[0].name} shows run {run_id} aborted")


@check("race/released", scope="race", evidence=("turns",),
       summary="after the winner ends, a new turn succeeds")
def released(trial: Trial) -> CheckResult:
    prop = "race/released"
    after = turns(trial, "released")
    answered = [t for t in after if t.outcome == "ok"]
    bad = [t for t in answered if not (t.tracked and t.terminal == "finish")]
    if bad:
        what = [f"op {t.index}: {t.status} terminal={t.terminal!r}" for t in bad]
        return CheckResult(prop, "invalid", f"the turn after the winner ended was refused or did "
                           f"not finish: {_listing(what)}", _ops(bad))
    if not answered:
        return CheckResult(prop, "unknown", "no answered turn after the winner ended",
                           _ops(after))
    return CheckResult(prop, "valid", f"the turn after the winner ended got 200 and finished "
                       f"({_cite(_ops(answered))})")
