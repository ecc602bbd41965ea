"""A run ends as the scenario expects, and a stop aimed at an ended run changes nothing:
``run/expected-end`` and ``stop/stale-ignored``, properties only some scenarios check. Pure.

Evidence conventions (recorded by ``program.py``):

- ``run`` op, phase ``final`` (``wait-run-end``): ok ``{status, run: {id, status, error},
  message: {status, content}}``; ``trial.meta.expect_end`` is the status the scenario expects
  and ``expected_content`` the provider's whole answer when the run must have finished.
- ``stop`` op with invoke role ``stale``: a stop aimed at the chat's previous, ended run;
  ``runs`` observations (and database snapshots) labelled ``before-stale`` / ``after-stale``
  around it.

Decisions (beyond the observation rules of ``observations``, which these share):

- ``stop/stale-ignored``: besides ``stopped:false`` and the newer run still active after it, the
  ended run the stale stop aimed at must keep its terminal status: its status in an
  ``after-stale`` observation is compared with ``before-stale`` (else with the status its
  stream's terminal frame implies: finish → succeeded, error → failed, abort → aborted). A
  change, or the run missing from an observation that lists every run of its chat, is
  ``invalid``; not observed, or no status to compare with, is ``unknown``.
"""

from __future__ import annotations

from raceharness.core.checks.base import ACTIVE, FRAME_STATUS, CheckResult, _int, _opt_str
from raceharness.core.checks.observations import _labelled
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import _winner_run_id, find_winner, turns
from raceharness.core.history import Trial


@check("run/expected-end", scope="scenario", evidence=("racers", "runs", "meta"),
       summary="a run ends with the status the scenario expects")
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


@check("stop/stale-ignored", scope="scenario",
       evidence=("racers", "turns", "stops", "runs", "db"),
       summary="a stop aimed at an ended run changes nothing")
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
    # ``stopped`` is the adapter's reading of the answer: protocol.md's 200 stopped:false;
    # a target's own "no such active run" (LangGraph's 404 to a cancel of an ended run)
    if status >= 500 or comp.get("stopped") is not False:
        return CheckResult(prop, "invalid", f"a stop aimed at the ended run {target} "
                           f"answered {status} stopped={comp.get('stopped')!r}, "
                           "expected an answer that nothing was stopped (protocol: 200 "
                           "stopped:false)", (comp.index,))
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
