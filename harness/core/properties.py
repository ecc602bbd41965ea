"""Every property by id, and running them on one trial. Pure.

The race properties live in :mod:`raceharness.core.checkers`, the ones only some scenarios
check in :mod:`raceharness.core.scenario_checks`; this module composes them, so neither has to
import the other's registry (no import circle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from raceharness.core.checkers import INTERRUPTED, RACE_CHECKERS, CheckResult
from raceharness.core.history import Trial
from raceharness.core.scenario_checks import SCENARIO_CHECKERS

CHECKERS: dict[str, Callable[[Trial], CheckResult]] = {**RACE_CHECKERS, **SCENARIO_CHECKERS}


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
