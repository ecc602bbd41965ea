"""The race happened, it had one winner, and the losers were answered right: conformance.md §2's
``race/overlap-achieved``, ``race/one-winner``, ``race/losers-409``, ``race/holder-named`` and
``race/losers-fast``.
Pure.

Decisions
---------
- A racer "got 200" when status 200 was seen, on an ok *or* an info completion (headers came,
  the stream did not end): ``race/one-winner`` counts both.
- ``race/overlap-achieved`` is never ``invalid``: a race that did not happen proves nothing.
- ``race/losers-409``: every loser got the target's conflict answer (``meta.conflict``; absent:
  the protocol's JSON 409 ``A_RUN_ALREADY_ACTIVE``). No racer got 200 on a chat nothing held
  (no ``holder`` turn got 200, no observation showed a run active): every conflict answer
  there is a false conflict.
- ``race/holder-named``: the holder each conflict answer names (``meta.conflict.holder``,
  default ``activeRunId``) must be a known run of the chat (the ``run_id`` of any 200 turn on
  it, or a run an observation of it showed active); ``null`` is a violation while a known run
  was active at the loser's answer, and allowed otherwise (the holder may have ended). A target
  whose answer names no holder (``holder = ""``, or ``meta.conflict_holder_id`` false) gives no
  evidence: ``unknown`` (its adapter declares the property not checkable).
- A racer whose request never reached the target (fail) makes the properties about it
  ``unknown``, never ``invalid``; a racer with no answer (info) is a hang: ``invalid`` for the
  loser properties, undecided for ``race/one-winner``.
- Without a winner, ``race/losers-fast`` can only be ``invalid`` (a slow or missing answer) or
  ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable

from raceharness.core.checks.base import (
    ACTIVE_RUN_STATUSES,
    DEFAULT_LOSERS_FAST_BOUND_MS,
    NS_PER_MS,
    CheckResult,
    _cite,
    _int,
    _listing,
    _ms,
    _number,
    conflict_answer,
)
from raceharness.core.checks.observations import observations
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import (
    Request,
    _conflict,
    _json,
    _ops,
    _rate_limited,
    _statuses,
    find_winner,
    losers,
    run_end_ns,
    turns,
    winner_end_ns,
)
from raceharness.core.history import Trial


@check("race/overlap-achieved", scope="race", evidence=("racers", "stops", "meta"),
       summary="the race really happened")
def overlap_achieved(trial: Trial) -> CheckResult:
    prop = "race/overlap-achieved"
    racers = turns(trial, "racer")
    n = _int(trial.meta.get("n", len(racers)), "meta: n")
    if n < 2 or not racers:
        return CheckResult(prop, "unknown", f"not a race: n={n}, {len(racers)} racer(s)")
    if len(racers) < n:
        return CheckResult(prop, "unknown", f"only {len(racers)} of n={n} racers recorded")
    failed = [r for r in racers if r.outcome == "fail"]
    if failed:
        return CheckResult(prop, "unknown", "request never reached the target: "
                           f"{_cite(_ops(failed))}", _ops(failed))
    winner = find_winner(racers)
    if winner is None:
        return CheckResult(prop, "unknown", f"no winner: no racer got 200 ({_statuses(racers)})")
    end = winner_end_ns(trial, winner)
    late = [r for r in racers if r.sent_ns > end]
    if late:
        return CheckResult(prop, "unknown", f"the race did not happen for {len(late)} of "
                           f"{len(racers)} racers ({_cite(_ops(late))}): sent after the winner "
                           f"(op {winner.index}) ended", _ops(late))
    spread_ms = (max(r.sent_ns for r in racers) - min(r.sent_ns for r in racers)) / NS_PER_MS
    return CheckResult(prop, "valid", f"all {len(racers)} racers sent while the winner (op "
                       f"{winner.index}) was active; send spread {spread_ms:.3f} ms")


@check("race/one-winner", scope="race", evidence=("racers", "meta"),
       summary="exactly one 200, with a run id")
def one_winner(trial: Trial) -> CheckResult:
    prop = "race/one-winner"
    racers = turns(trial, "racer")
    if not racers:
        return CheckResult(prop, "unknown", "no racer in the history")
    wins = [r for r in racers if r.got_200]
    if len(wins) > 1:
        return CheckResult(prop, "invalid", f"{len(wins)} racers got 200 ({_cite(_ops(wins))}): "
                           "more than one winner", _ops(wins))
    if wins:
        win = wins[0]
        if win.run_id is None:
            return CheckResult(prop, "invalid", f"op {win.index}: a 200 without runId is a "
                               "second, untracked winner", (win.index,))
        return CheckResult(prop, "valid", f"one winner: op {win.index}, run {win.run_id}")
    answer = conflict_answer(trial.meta)
    undecided = [r for r in racers if r.outcome != "ok" or _rate_limited(r, answer)]
    if undecided:
        return CheckResult(prop, "unknown", f"no 200, and {len(undecided)} racer(s) undecided by "
                           f"info, fail or 429 ({_statuses(racers)})", _ops(undecided))
    return CheckResult(prop, "invalid", f"no winner: none of {len(racers)} racers got 200 "
                       f"({_statuses(racers)})", _ops(racers))


@check("race/losers-409", scope="race",
       evidence=("racers", "turns", "runs", "db", "meta"),
       summary="every loser gets the target's conflict answer (a JSON 409)")
def losers_409(trial: Trial) -> CheckResult:
    prop = "race/losers-409"
    racers = turns(trial, "racer")
    lost = losers(racers, find_winner(racers))
    if not lost:
        return CheckResult(prop, "unknown", f"no losers among {len(racers)} racer(s)")
    answer = conflict_answer(trial.meta)
    bad: list[Request] = []
    undecided: list[Request] = []
    conflicts: list[Request] = []
    for r in lost:
        if r.outcome == "fail" or _rate_limited(r, answer):
            undecided.append(r)
        elif r.outcome == "info" or not _conflict(r, answer):
            bad.append(r)
        else:
            conflicts.append(r)
    if bad:
        what = [f"op {r.index}: no answer" if r.outcome == "info"
                else f"op {r.index}: {r.status} code={r.code} json={_json(r)}"
                + (f" body={_body(r)!r}" if answer.pattern else "") for r in bad]
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(lost)} losers not a "
                           f"{answer.describe(json=True)}: {_listing(what)}", _ops(bad))
    chats = [_chat_of(r) for r in conflicts]
    held = {chat: _held(trial, chat) for chat in set(chats)}  # 100,000 losers share a few
    false = [r for r, chat in zip(conflicts, chats, strict=True) if not held[chat]]
    if false:
        return CheckResult(prop, "invalid", f"no racer got 200 and nothing held the chat, yet "
                           f"{len(false)} racer(s) got {answer.status}: false conflicts "
                           f"({_cite(_ops(false))})", _ops(false))
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} of {len(lost)} losers got 429 or "
                           f"never reached the target ({_cite(_ops(undecided))})", _ops(undecided))
    return CheckResult(prop, "valid", f"all {len(lost)} losers got {answer.describe()} "
                       "while a run held the chat")


@check("race/holder-named", scope="race",
       evidence=("racers", "turns", "stops", "runs", "db", "meta"),
       summary="each conflict answer names the run holding the chat")
def holder_named(trial: Trial) -> CheckResult:
    prop = "race/holder-named"
    racers = turns(trial, "racer")
    lost = losers(racers, find_winner(racers))
    answer = conflict_answer(trial.meta)
    if trial.meta.get("conflict_holder_id") is False or not answer.holder:
        why = ("meta conflict_holder_id: false" if answer.holder
               else 'meta conflict.holder: ""')
        return CheckResult(prop, "unknown", f"the target's conflict answer names no holder "
                           f"({why}): nothing to check")
    conflicts = [r for r in lost if r.outcome == "ok" and _conflict(r, answer)]
    if not conflicts:
        return CheckResult(prop, "unknown", f"no loser got {answer.describe()} "
                           f"({_statuses(lost) or 'no losers'})")
    chats = [_chat_of(r) for r in conflicts]
    known = {chat: _known_runs(trial, chat) for chat in set(chats)}
    tracked = _tracked_runs(trial)
    wrong: list[tuple[Request, str]] = []
    for r, chat in zip(conflicts, chats, strict=True):
        assert r.completion is not None  # a conflict was answered
        active = r.completion.value.get("active_run_id")
        if active is not None and not isinstance(active, str):
            active = r.active_run_id  # the strict reader names the op
        if active is not None:
            if active not in known[chat]:
                wrong.append((r, f"op {r.index}: {answer.holder} {active} names no run that "
                                 "held the chat"))
        elif (holder := _active_at(trial, r, tracked.get(chat, ()))) is not None:
            wrong.append((r, f"op {r.index}: {answer.holder} null while run {holder} was "
                             "active"))
    if wrong:
        return CheckResult(prop, "invalid", f"{len(wrong)} of {len(conflicts)} conflict "
                           f"answers named the wrong holder (protocol §2.3/§2.5: the holder's "
                           f"id, null only once it ended): {_listing([w for _, w in wrong])}",
                           _ops(r for r, _ in wrong))
    return CheckResult(prop, "valid", f"all {len(conflicts)} conflict answers named a run "
                       f"that held the chat ({answer.holder})")


def _known_runs(trial: Trial, chat: str | None) -> set[str]:
    """The runs that may have held ``chat``: every tracked 200 turn's on it, and every run an
    observation of it showed active."""
    def build() -> dict[str | None, set[str]]:
        known: dict[str | None, set[str]] = {}
        for on, tracked in _tracked_runs(trial).items():
            known.setdefault(on, set()).update(run_id for run_id, _, _ in tracked)
        for o in observations(trial):
            known.setdefault(o.chat_id, set()).update(
                run_id for run_id, status in o.statuses.items() if status in ACTIVE_RUN_STATUSES)
        return known
    known = trial.memo(("known-runs",), build)
    if chat is None:
        return set().union(*known.values())
    return known.get(chat, set()) | known.get(None, set())


def _held(trial: Trial, chat: str | None) -> bool:
    """Something may have held ``chat`` during the race: a racer got 200 on it, a ``holder``
    turn got 200 on it, or an observation of it (or of an unknown chat) showed a run active."""
    def build() -> set[str | None]:
        return _streams(trial)[1] | {
            o.chat_id for o in observations(trial)
            if any(status in ACTIVE_RUN_STATUSES for status in o.statuses.values())}
    held = trial.memo(("held-chats",), build)
    return chat in held or None in held


def _active_at(trial: Trial, loser: Request,
               runs: Iterable[tuple[str, int, Request]]) -> str | None:
    """One of ``runs`` (the tracked runs of the loser's chat) that was active when the loser's
    answer came, if any."""
    at = loser.headers_ns
    if at is None:
        return None
    for run_id, start, turn in runs:
        if turn.index != loser.index and start <= at < run_end_ns(trial, turn):
            return run_id
    return None


def _body(r: Request) -> str:
    """The start of ``r``'s answer body, as recorded (for a reason)."""
    body = r.completion.value.get("body") if r.completion is not None else None
    return body[:60] if isinstance(body, str) else ""


def _chat_of(r: Request) -> str | None:
    """``r.chat``, read without its descriptors for the common case (a chat asked for)."""
    chat = r.invoke.value.get("chat_id")
    return chat if isinstance(chat, str) else r.chat


def _streams(trial: Trial) -> tuple[dict[str | None, list[tuple[str, int, Request]]],
                                    set[str | None]]:
    """One pass over the turns that got 200: chat → (run id, headers_ns, turn) of every tracked
    one (any role), and the chats a racer or a ``holder`` turn got 200 on."""
    def build() -> tuple[dict[str | None, list[tuple[str, int, Request]]], set[str | None]]:
        by_chat: dict[str | None, list[tuple[str, int, Request]]] = {}
        held: set[str | None] = set()
        for t in turns(trial):
            if t.outcome == "fail" or not t.got_200:
                continue
            if t.invoke.get("role") in ("racer", "holder"):
                held.add(t.chat)
            if t.run_id is not None and t.headers_ns is not None:
                by_chat.setdefault(t.chat, []).append((t.run_id, t.headers_ns, t))
        return by_chat, held
    return trial.memo(("streams",), build)


def _tracked_runs(trial: Trial) -> dict[str | None, list[tuple[str, int, Request]]]:
    """Chat → (run id, headers_ns, turn) of every turn of any role that got a tracked 200."""
    return _streams(trial)[0]


@check("race/losers-fast", scope="race", evidence=("racers", "stops", "meta"),
       summary="losers are answered quickly, while the winner is active")
def losers_fast(trial: Trial) -> CheckResult:
    prop = "race/losers-fast"
    bound_ms = _number(trial.meta.get("losers_fast_bound_ms", DEFAULT_LOSERS_FAST_BOUND_MS),
                       "meta: losers_fast_bound_ms")
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    lost = losers(racers, winner)
    if not lost:
        return CheckResult(prop, "unknown", f"no losers among {len(racers)} racer(s)")
    end = winner_end_ns(trial, winner) if winner is not None else None
    bad: list[tuple[Request, str]] = []
    undecided: list[Request] = []
    latencies: list[int] = []
    for r in lost:
        if r.outcome == "fail":
            undecided.append(r)
            continue
        headers = r.headers_ns
        if headers is None:
            bad.append((r, f"op {r.index}: never answered"))
            continue
        latency = headers - r.sent_ns
        latencies.append(latency)
        why = []
        if latency > bound_ms * NS_PER_MS:
            why.append(f"{_ms(latency)} > {bound_ms:g} ms")
        if end is not None and headers > end:
            why.append(f"answered {_ms(headers - end)} after the winner ended")
        if why:
            bad.append((r, f"op {r.index}: " + ", ".join(why)))
    if bad:
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(lost)} losers not answered fast "
                           f"while the winner was active: {_listing([w for _, w in bad])}",
                           _ops(r for r, _ in bad))
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} loser(s) never reached the target "
                           f"({_cite(_ops(undecided))})", _ops(undecided))
    if winner is None:
        return CheckResult(prop, "unknown", "no winner: cannot tell whether the losers were "
                           "answered while it was active")
    return CheckResult(prop, "valid", f"all {len(lost)} losers answered within "
                       f"{_ms(max(latencies))} (bound {bound_ms:g} ms) while the winner was active")
