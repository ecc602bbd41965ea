"""Contention stays per chat: conformance.md §2's ``chats/independent`` and
``chats/one-winner-each``. Pure.

Decisions
---------
- ``chats/independent``: the target's conflict status (``meta.conflict``; absent: 409) is a false
  conflict, any other non-200 except a rate limit (429) is ``invalid`` too; a rate limit, info
  and fail are ``unknown``.
- ``chats/one-winner-each``: every racer but each chat's winner must get the target's conflict
  answer (absent: a JSON 409 ``A_RUN_ALREADY_ACTIVE``).
"""

from __future__ import annotations

from typing import Any

from raceharness.core.checks.base import CheckResult, _cite, _listing, conflict_answer
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import (
    Request,
    _conflict,
    _ops,
    _rate_limited,
    _statuses,
    turns,
)
from raceharness.core.history import Trial


@check("chats/independent", scope="race", evidence=("racers", "meta"),
       summary="turns on different chats never conflict")
def chats_independent(trial: Trial) -> CheckResult:
    prop = "chats/independent"
    racers = turns(trial, "racer")
    chats = [r.chat_id for r in racers]
    if len(racers) < 2 or None in chats or len(set(chats)) != len(chats):
        return CheckResult(prop, "unknown", f"not a distinct-chat race: {len(racers)} racer(s) "
                           f"on {len(set(chats))} chat(s)")
    answer = conflict_answer(trial.meta)
    status = answer.status
    conflicts = [r for r in racers
                 if r.outcome == "ok" and r.status == status and not _rate_limited(r, answer)]
    if conflicts:
        return CheckResult(prop, "invalid", f"false conflict: {len(conflicts)} of {len(racers)} "
                           f"turns on distinct chats got {status} ({_cite(_ops(conflicts))})",
                           _ops(conflicts))
    refused = [r for r in racers
               if r.outcome == "ok" and r.status != 200 and not _rate_limited(r, answer)]
    if refused:
        return CheckResult(prop, "invalid", f"{len(refused)} of {len(racers)} turns on distinct "
                           f"chats refused ({_statuses(refused)})", _ops(refused))
    undecided = [r for r in racers if r.outcome != "ok" or _rate_limited(r, answer)]
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} of {len(racers)} turns undecided "
                           f"({_statuses(undecided)})", _ops(undecided))
    return CheckResult(prop, "valid", f"all {len(racers)} turns on distinct chats got 200")


@check("chats/one-winner-each", scope="race", evidence=("racers", "meta"),
       summary="several racers on each of several chats: one winner per chat")
def chats_one_winner_each(trial: Trial) -> CheckResult:
    """Several simultaneous turns on each of several chats: per chat, exactly one tracked 200
    and the target's conflict answer (a JSON 409 A_RUN_ALREADY_ACTIVE by default) for every
    other (contention stays per chat)."""
    prop = "chats/one-winner-each"
    answer = conflict_answer(trial.meta)
    racers = turns(trial, "racer")
    by_chat: dict[Any, list[Request]] = {}
    for r in racers:
        by_chat.setdefault(r.chat_id, []).append(r)
    if None in by_chat or len(by_chat) < 2 or all(len(rs) < 2 for rs in by_chat.values()):
        return CheckResult(prop, "unknown", f"not a many-chat race: {len(racers)} racer(s) on "
                           f"{len(by_chat)} chat(s)")
    problems: list[str] = []
    offending: list[Request] = []
    undecided: list[Request] = []
    for chat, rs in by_chat.items():
        winners = [r for r in rs if r.outcome == "ok" and r.got_200]
        if len(winners) != 1 or not winners[0].tracked:
            problems.append(f"chat {chat}: {len(winners)} winner(s)"
                            + ("" if len(winners) != 1 else " without a run id"))
            offending += winners
            continue
        for r in rs:
            if r is winners[0]:
                continue
            if r.outcome != "ok" or _rate_limited(r, answer):
                undecided.append(r)
            elif not _conflict(r, answer):
                problems.append(f"op {r.index}: {r.status} code={r.code}")
                offending.append(r)
    if problems:
        return CheckResult(prop, "invalid", f"{len(problems)} problem(s) across {len(by_chat)} "
                           f"chats: {_listing(problems)}", _ops(offending))
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} of {len(racers)} turns undecided "
                           f"({_statuses(undecided)})", _ops(undecided))
    return CheckResult(prop, "valid", f"each of {len(by_chat)} chats had exactly one winner; "
                       f"the other {len(racers) - len(by_chat)} turns got {answer.status}")


@check("chats/created-once", scope="scenario", evidence=("racers", "chats"),
       summary="turns racing to create a chat: one winner, one chat record")
def chats_created_once(trial: Trial) -> CheckResult:
    """N turns on a chat id nobody made yet (``fresh-chat-id``), then ``count-chats``: exactly
    one racer got 200 and the target holds exactly one chat record under that id. A count the
    target could not give (``count: null``) is ``unknown``; duplicates, or no record behind a
    winner, are ``invalid``."""
    prop = "chats/created-once"
    racers = turns(trial, "racer")
    if not racers:
        return CheckResult(prop, "unknown", "no racers recorded")
    won = [r for r in racers if r.outcome != "fail" and r.got_200]
    if len(won) > 1:
        return CheckResult(prop, "invalid", f"{len(won)} racers got 200 on one new chat "
                           f"({_cite(_ops(won))})", _ops(won))
    counts = [op for op in trial.ops if op.f == "chats" and op.type in ("ok", "info")]
    if not counts or counts[-1].type != "ok":
        return CheckResult(prop, "unknown", "the chat's records were not counted (no answered "
                           "count-chats)")
    last = counts[-1]
    count = last.value.get("count")
    if count is None:
        return CheckResult(prop, "unknown", f"op {last.index}: the target cannot count chat "
                           f"records (status {last.value.get('status')})")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise TypeError(f"op {last.index}: count={count!r} is not an int >= 0")
    if count > 1:
        return CheckResult(prop, "invalid", f"op {last.index}: {count} chat records under one "
                           "chat id after the racers created it (duplicates)", (last.index,))
    if not won:
        return CheckResult(prop, "unknown", f"no racer got 200 ({_statuses(racers)}): the "
                           "chat was not created by the race")
    if count == 0:
        return CheckResult(prop, "invalid", f"op {last.index}: no chat record, yet op "
                           f"{won[0].index} got 200 on it", (last.index, won[0].index))
    return CheckResult(prop, "valid", f"one winner of {len(racers)} and one chat record")
