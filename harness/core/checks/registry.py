"""The property registry: every checker declared once, with its id, scope, evidence and summary.

::

    @check("race/one-winner", scope="race", evidence=("racers",),
           summary="exactly one 200, with a run id")
    def one_winner(trial: Trial) -> CheckResult: ...

registers ``one_winner`` as property ``race/one-winner`` and returns it unchanged (no wrapper: a
checker costs what its body costs). :data:`REGISTRY` keeps the order of registration: the order
in which ``raceharness.core.checks`` imports its modules, then the order of definition. Derived
from it: ``properties.CHECKERS``, ``RACE_CHECKERS`` (scope ``race``, checked when no list is
given), ``SCENARIO_CHECKERS``, the scenario loader's property validation, and the property table
of conformance.md §4 (``summary`` is its "short claim").

``evidence`` names every part of a trial the checker reads (:data:`EVIDENCE`); the ``meta``
entry is the scenario's expectations and bounds, not ``meta.interrupted``, which decides every
property (``check_trial``). A malformed declaration (an id used twice, a checker registered
twice, an unknown scope or evidence, an empty or multi-line summary) is a bug here: it raises
``ValueError`` when the module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from raceharness.core.checks.base import CheckResult
from raceharness.core.history import Trial

Checker = Callable[[Trial], CheckResult]
Scope = Literal["race", "scenario"]
Evidence = Literal["racers", "turns", "stops", "runs", "chats", "probes", "outages", "provider",
                   "db", "meta"]

SCOPES: dict[Scope, str] = {
    "race": "a property of every race (conformance.md §2): checked when no list is given",
    "scenario": "checked only by the scenarios that name it",
}
EVIDENCE: dict[Evidence, str] = {
    "racers": "the race's turn ops (role racer)",
    "turns": "turn ops of the other roles (setup, holder, released, storm, outage..., blocked)",
    "stops": "stop ops (/stop)",
    "runs": "runs and run ops (/runs and /run answers)",
    "chats": "chats ops (how many chat records the target holds under an id: count-chats)",
    "probes": "probe ops (another user's token, bad input)",
    "outages": "database ops (the database taken away and given back)",
    "provider": "the fake provider's ledger (trial.provider)",
    "db": "database snapshots (trial.db)",
    "meta": "the trial's meta: the scenario's expectations and bounds",
}
ID_RE = re.compile(r"^[a-z]+/[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Property:
    """One property: its id, its checker and what the registry says of it."""

    id: str
    checker: Checker
    scope: Scope
    evidence: tuple[Evidence, ...]
    summary: str


REGISTRY: dict[str, Property] = {}


def check(property_id: str, *, scope: Scope, evidence: tuple[Evidence, ...],
          summary: str) -> Callable[[Checker], Checker]:
    """Register the decorated function as the checker of ``property_id`` (see the module)."""
    problems: list[str] = []
    if not ID_RE.match(property_id):
        problems.append("the id is not 'area/name' in lowercase letters, digits and '-'")
    if scope not in SCOPES:
        problems.append(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    if not evidence:
        problems.append("no evidence named")
    strangers = [e for e in evidence if e not in EVIDENCE]
    if strangers:
        problems.append(f"unknown evidence {', '.join(map(repr, strangers))}; known: "
                        f"{', '.join(EVIDENCE)}")
    if len(set(evidence)) != len(evidence):
        problems.append("evidence named twice")
    if not summary.strip() or "\n" in summary:
        problems.append("the summary is not one non-empty line")
    if problems:
        raise ValueError(f"property {property_id!r}: {'; '.join(problems)}")

    def register(checker: Checker) -> Checker:
        if property_id in REGISTRY:
            raise ValueError(f"property {property_id!r}: registered twice")
        twice = [p.id for p in REGISTRY.values() if p.checker is checker]
        if twice:
            raise ValueError(f"property {property_id!r}: its checker is already {twice[0]!r}'s")
        REGISTRY[property_id] = Property(property_id, checker, scope, evidence, summary)
        return checker
    return register
