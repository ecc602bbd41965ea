"""The property checkers: one pure function per property, each declared once in the registry.

Theory of operation
-------------------
Jepsen's checker model (``checker.clj``): a checker reads the whole evidence of one trial (ops,
provider ledger, database snapshots) and returns a :class:`~.base.CheckResult` — ``valid``,
``invalid`` or ``unknown`` — with a one-line reason and the offending operations. ``unknown``
means the evidence cannot decide (the race did not happen, a request never reached the target,
there is no provider or database access); missing evidence is never ``valid``. Evidence is read
strictly: a field of the wrong type raises ``TypeError`` naming the op, the field and the value,
and ``properties.check_trial`` turns a checker that raises into ``unknown``.

Each checker is declared once, by :func:`~.registry.check`: its property id, its scope (``race``:
conformance.md §2, checked when no list is given; ``scenario``: only where a scenario names it),
the evidence it reads and a one-line summary. Everything else derives from :data:`REGISTRY`:
``properties.CHECKERS`` and ``check_trial``, the scenario loader's property validation, and the
property table of conformance.md §4 (a test keeps the table equal to the registry).

Modules, imported below in the registry's order (the order of conformance.md §4):

- ``base``: verdicts, :class:`~.base.CheckResult`, the strict readers, the wording of reasons;
  ``registry``: :func:`~.registry.check` and :data:`REGISTRY`;
- ``turns``: the ``turn`` requests, the winner and the losers, when a run ends;
  ``observations``: what ``/runs``, ``/run`` and database snapshots showed of a chat's runs;
- the race properties: ``race`` (the race happened, one winner, the losers' answers),
  ``provider`` (the fake provider's calls), ``runs`` (tracked runs, rows, the stop, the release),
  ``stream`` (the frame rules), ``chats`` (several chats);
- the scenario properties: ``lifecycle`` (a run's end, a stale stop), ``refusals`` (another
  user, bad input), ``recovery`` (database outages, a dead owner's lease, a disconnect storm).

To add a property: a function ``(Trial) -> CheckResult`` decorated with ``@check(...)`` in the
module of its area; its row in conformance.md §4; a stripped and a contradicted case in
``tests/harness/core/test_evidence_rules.py`` (a test fails for a property without both, and
for a registry that disagrees with conformance.md §4).
"""

# isort: off
# Importing a module registers its checkers: the import order is the registry's order.
from raceharness.core.checks import race, provider, runs, stream, chats  # race properties
from raceharness.core.checks import lifecycle, refusals, recovery  # scenario properties
# isort: on
from raceharness.core.checks.registry import EVIDENCE, REGISTRY, Evidence, Property, Scope, check

__all__ = ["EVIDENCE", "REGISTRY", "Evidence", "Property", "Scope", "check", "chats", "lifecycle",
           "provider", "race", "recovery", "refusals", "runs", "stream"]
