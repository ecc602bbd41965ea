"""Every property by id, and running them on one trial. Pure.

The checkers live in :mod:`raceharness.core.checks`, each declared once in its registry; this
module derives the tables the rest of the harness uses from it: :data:`CHECKERS` (every
property, in the order of conformance.md §4), :data:`RACE_CHECKERS` (the race properties of
conformance.md §2, checked when no list is given), :data:`SCENARIO_CHECKERS` (the ones only some
scenarios check) and :data:`SINGLE_CHAT_RACE` (the race properties of a race on one chat).

Decisions
---------
- A trial with ``meta.interrupted`` is ``unknown`` for every property: nothing a cut-off trial
  recorded can decide.
- A checker that raises (a bug here, or a malformed record) becomes ``unknown`` "checker
  crashed: <ExcType>: <msg>", so one bad record never hides the other verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from raceharness.core.checks import REGISTRY
from raceharness.core.checks.base import CheckResult
from raceharness.core.history import Trial

INTERRUPTED = ("the trial was interrupted before it completed (Ctrl-C): nothing it recorded "
               "can decide")

CHECKERS: dict[str, Callable[[Trial], CheckResult]] = {
    p.id: p.checker for p in REGISTRY.values()}
RACE_CHECKERS: dict[str, Callable[[Trial], CheckResult]] = {
    p.id: p.checker for p in REGISTRY.values() if p.scope == "race"}
SCENARIO_CHECKERS: dict[str, Callable[[Trial], CheckResult]] = {
    p.id: p.checker for p in REGISTRY.values() if p.scope == "scenario"}
SINGLE_CHAT_RACE: tuple[str, ...] = tuple(p for p in RACE_CHECKERS if not p.startswith("chats/"))


def check_trial(trial: Trial, properties: Iterable[str] | None = None) -> dict[str, CheckResult]:
    """Run the named checkers (the race properties, :data:`RACE_CHECKERS`, when None) on one
    trial, in the order given. Never raises for a bad trial: a crashing checker yields
    ``unknown``, and every property of an interrupted trial (``meta.interrupted``) is
    ``unknown``."""
    names = list(RACE_CHECKERS) if properties is None else (
        [properties] if isinstance(properties, str) else list(properties))
    strangers = [name for name in names if name not in CHECKERS]
    if strangers:
        raise ValueError(f"unknown propert{'y' if len(strangers) == 1 else 'ies'} "
                         f"{', '.join(map(repr, strangers))}; valid: {', '.join(CHECKERS)}")
    if trial.meta.get("interrupted"):
        return {name: CheckResult(name, "unknown", INTERRUPTED) for name in names}
    results: dict[str, CheckResult] = {}
    for name in names:
        try:
            results[name] = CHECKERS[name](trial)
        except Exception as exc:  # a crash is unknown, never a verdict (checker.clj)
            message = " ".join(str(exc).split())
            results[name] = CheckResult(name, "unknown",
                                        f"checker crashed: {type(exc).__name__}: {message}")
    return results
