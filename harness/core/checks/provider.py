"""No loser reaches the fake provider and the winner reaches it exactly once: conformance.md
§2's ``race/no-loser-provider-call`` and ``race/winner-provider-call``. Pure.

Decisions
---------
- An empty provider ledger (no call, no contact) while a turn got a tracked 200 is missing
  evidence for ``race/no-loser-provider-call`` and ``race/no-untracked-run`` (nothing shows the
  target calls the fake provider); ``race/winner-provider-call`` owns that failure.
- Several racers got 200 on one chat: a call's nonce (the last user message of the history the
  service forwards) may be another winner's, so ``race/winner-provider-call`` is ``unknown`` and
  ``race/no-loser-provider-call`` is ``invalid`` only when the racers' calls and the burst's
  unattributed contacts outnumber the racers that got 200 (a call with the nonce of a racer
  that got no 200 is ``invalid`` whatever the count).
- Burst contacts: ledger entries that are contacts, or complete calls without a nonce, arriving
  after ``meta.release_ns``. With any, ``race/no-loser-provider-call`` is ``invalid`` when the
  racers' calls plus those contacts outnumber the racers that got 200.
"""

from __future__ import annotations

from raceharness.core.checks.base import CheckResult, _cite, _listing, _opt_bool, _opt_int
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import Request, _ops, find_winner, turns
from raceharness.core.history import ProviderCall, Trial

EMPTY_LEDGER = "the provider ledger is empty: nothing shows the target calls the fake provider"


def _ledger_empty(trial: Trial) -> bool:
    """No provider call and no contact at all, while a turn got a tracked 200."""
    return trial.provider is not None and not trial.provider and any(
        t.outcome != "fail" and t.tracked for t in turns(trial))


def _is_contact(call: ProviderCall) -> bool:
    """A ledger entry no nonce attributes: a contact, or a complete call without a nonce."""
    complete = _opt_bool(call.complete, f"provider call {call.index}: complete")
    return complete is False or call.nonce is None


def _burst_contacts(trial: Trial) -> list[ProviderCall]:
    """Unattributed ledger entries that arrived after the release."""
    release = _opt_int(trial.meta.get("release_ns"), "meta: release_ns")
    if release is None or trial.provider is None:
        return []
    return [c for c in trial.provider if _is_contact(c) and c.arrival_ns > release]


@check("race/no-loser-provider-call", scope="race", evidence=("racers", "turns", "provider",
                                                              "meta"),
       summary="no loser reaches the provider")
def no_loser_provider_call(trial: Trial) -> CheckResult:
    prop = "race/no-loser-provider-call"
    if trial.provider is None:
        return CheckResult(prop, "unknown", "no provider access")
    racers = turns(trial, "racer")
    winners: list[Request] = []
    lost: list[Request] = []  # the racers that got no 200 (the winner got one)
    for r in racers:
        (winners if r.got_200 else lost).append(r)
    if not lost and len(winners) < 2:
        return CheckResult(prop, "unknown", f"no losers among {len(racers)} racer(s)")
    if _ledger_empty(trial):
        return CheckResult(prop, "unknown", EMPTY_LEDGER)
    by_nonce = {r.nonce: r for r in reversed(lost) if r.nonce is not None}
    hits = [(c, by_nonce[c.nonce]) for c in trial.provider
            if c.nonce in by_nonce and not _is_contact(c)]
    if hits:
        what = [f"call {c.index} ← op {r.index}" for c, r in hits]
        return CheckResult(prop, "invalid", f"{len(hits)} provider call(s) carry a loser's nonce: "
                           f"{_listing(what)}", _ops(r for _, r in hits))
    contacts = len(_burst_contacts(trial))
    nonces = {r.nonce for r in racers if r.nonce is not None} \
        if contacts or len(winners) > 1 else set()
    calls = sum(1 for c in trial.provider if c.nonce in nonces and not _is_contact(c))
    if (contacts or len(winners) > 1) and calls + contacts > len(winners):
        return CheckResult(prop, "invalid", f"{calls + contacts} provider contacts for "
                           f"{len(winners)} winner(s): {contacts} unattributed contact(s) after "
                           "the release")
    if len(winners) > 1:
        return CheckResult(prop, "unknown", f"attribution ambiguous: {len(winners)} racers got "
                           f"200 ({_cite(_ops(winners))}) and a call carries the last user "
                           f"message of the history forwarded; {calls} racer call(s), no more "
                           "than the winners")
    extra = f", {contacts} unattributed contact(s)" if contacts else ", no unattributed contact"
    return CheckResult(prop, "valid", f"none of {len(trial.provider)} provider call(s) carries "
                       f"one of {len(lost)} losers' nonces{extra}")


@check("race/winner-provider-call", scope="race", evidence=("racers", "provider"),
       summary="the winner reaches it exactly once")
def winner_provider_call(trial: Trial) -> CheckResult:
    prop = "race/winner-provider-call"
    if trial.provider is None:
        return CheckResult(prop, "unknown", "no provider access")
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    if winner is None:
        return CheckResult(prop, "unknown", "no winner")
    wins = [r for r in racers if r.got_200 and r.chat == winner.chat]
    if len(wins) > 1:
        return CheckResult(prop, "unknown", f"attribution ambiguous: {len(wins)} racers got 200 "
                           f"on the chat ({_cite(_ops(wins))}) and a call carries the last user "
                           "message of the history forwarded, which may be another winner's")
    if winner.nonce is None:
        return CheckResult(prop, "unknown", f"the winner (op {winner.index}) carried no nonce")
    calls = [c.index for c in trial.provider if c.nonce == winner.nonce and not _is_contact(c)]
    if len(calls) == 1:
        return CheckResult(prop, "valid", f"one provider call (call {calls[0]}) for the winner "
                           f"(op {winner.index})")
    return CheckResult(prop, "invalid", f"{len(calls)} provider calls for the winner "
                       f"(op {winner.index}), expected 1", (winner.index,))
