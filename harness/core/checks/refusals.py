"""Another user can do nothing with the chat, and bad input is refused leaving nothing behind:
``auth/foreign-denied`` and ``input/rejected-cleanly``, properties only some scenarios check.
Pure.

Evidence conventions (recorded by ``program.py``):

- ``probe`` ops (invoke ``{role: foreign|bad-input, label, expect_status}``; ok ``{status}``).
  The foreign probe labelled ``stream`` (a turn started with another user's token) carries its
  nonce on its invoke (``op.nonce``); observations and snapshots labelled ``before-foreign`` /
  ``after-foreign`` surround the foreign probes.

Decisions (beyond the observation rules of ``observations``, which these share):

- ``auth/foreign-denied``: besides the 403s, no side effect: no provider call carries the
  ``stream`` probe's nonce (no provider access, or a probe without a nonce: ``unknown``); no run
  listed ``after-foreign`` that was not listed ``before-foreign`` (``/runs`` answers or
  snapshots), no new message row between the two snapshots; the owner's run still active after.
  Without a before/after pair ``unknown``.
"""

from __future__ import annotations

from raceharness.core.checks.base import ACTIVE, CheckResult, _int
from raceharness.core.checks.observations import _labelled
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import find_winner, turns
from raceharness.core.history import DbSnapshot, Trial


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


@check("auth/foreign-denied", scope="scenario",
       evidence=("racers", "probes", "runs", "db", "provider"),
       summary="another user can do nothing with the chat")
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


@check("input/rejected-cleanly", scope="scenario", evidence=("probes", "provider", "db"),
       summary="bad input gets the right 4xx and leaves nothing behind")
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
