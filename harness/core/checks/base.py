"""What every checker shares: verdicts, :class:`CheckResult`, the strict readers, the wording of
reasons, and combining verdicts. Pure.

A strict reader returns a field of the right type or raises ``TypeError`` naming where it was
read and the value ("op 12: status='abc' is not an int"). Names with one leading underscore are
private to the ``raceharness.core.checks`` package, whose modules share them.

Evidence conventions (what the race engine records; the ops: ``turns`` and ``observations``)
---------------------------------------------------------------------------------------------
- ``trial.meta``: ``n``, ``losers_fast_bound_ms`` (default 1000), ``stop_bound_ms`` (default
  2000), ``release_ns``; ``interrupted: true`` when the trial was cut off (set by the engine, or
  by ``history.loads_trials`` for a trial that never said ``ended``); ``conflict: {status,
  code, holder}``, the target's answer to a turn on a held chat (its profile's ``[conflict]``;
  absent: the protocol's, 409 ``A_RUN_ALREADY_ACTIVE`` naming the holder in ``activeRunId``;
  ``code`` / ``holder`` ``""``: no code to check / no holder named; ``pattern``: a regular
  expression the answer's ``body`` text must match); ``conflict_holder_id: false`` (older
  histories) when the target's conflict answer cannot name the holder; ``adapter`` and
  ``stream_end`` (``frame``, or ``status``: streams end without a terminal frame and the
  engine read the terminal from the run's status). ``trial.provider``: the ledger or None;
  an entry with ``complete=False`` is a *contact* (a connection closed before a whole
  request, no nonce); ``trial.db``: snapshots or None.

Decisions
---------
- A request is cited by the index of its completion op (its invoke's when it never completed).
  Provider calls and database rows are not ops: they are named in the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from raceharness.core.history import Op
from raceharness.core.protocol import (  # noqa: F401 - the checkers read them from here too
    ACTIVE_STATUSES,
    CONFLICT_HOLDER,
    CONFLICT_STATUS,
    DEFAULT_LOSERS_FAST_BOUND_MS,
    DEFAULT_STOP_BOUND_MS,
    FRAME_STATUS,
    RUN_ALREADY_ACTIVE,
    TERMINAL_FRAMES,
)

Verdict = Literal["valid", "invalid", "unknown"]
VERDICTS: tuple[Verdict, ...] = ("valid", "invalid", "unknown")
ACTIVE_RUN_STATUSES = frozenset(ACTIVE_STATUSES)
ACTIVE = ACTIVE_STATUSES
NS_PER_MS = 1_000_000
_CITE_LIMIT = 8
_LIST_LIMIT = 5


@dataclass(frozen=True)
class CheckResult:
    property: str
    verdict: Verdict
    reason: str
    ops: tuple[int, ...] = ()  # offending op indices


# -- strict readers ------------------------------------------------------------------------------

def _int(value: Any, where: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}={value!r} is not an int")
    return value


def _opt_int(value: Any, where: object) -> int | None:
    return None if value is None else _int(value, where)


def _number(value: Any, where: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where}={value!r} is not a number")
    return float(value)


def _opt_str(value: Any, where: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where}={value!r} is not a string")
    return value


def _list(value: Any, where: object) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"{where}={value!r} is not a list")
    return list(value)


def _opt_bool(value: Any, where: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{where}={value!r} is not a bool")
    return value


_T = TypeVar("_T")


class _once(Generic[_T]):  # noqa: N801 - used as a decorator, like property
    """A lazily computed attribute, kept in the instance after its first read (without the
    per-read lock ``functools.cached_property`` takes on Python 3.11). A value that fails to
    read raises each time, as a plain property would."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.name = fn.__name__

    def __get__(self, obj: Any, owner: Any = None) -> _T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


class _Where:
    """Where a value was read ("op 12: status"), formatted only if it is reported."""

    __slots__ = ("op", "key")

    def __init__(self, op: Op, key: str) -> None:
        self.op, self.key = op, key

    def __str__(self) -> str:
        return f"op {self.op.index}: {self.key}"


# -- the conflict answer ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ConflictAnswer:
    """The target's answer to a turn on a chat another run holds: protocol.md's by default."""

    status: int = CONFLICT_STATUS
    code: str = RUN_ALREADY_ACTIVE  # the JSON body's ``code``; "": no code to check
    holder: str = CONFLICT_HOLDER   # the JSON field naming the holder's run id; "": none
    pattern: str = ""               # a regular expression the body must match; "": none

    @property
    def json(self) -> bool:
        """The answer carries something in a JSON body (a code or the holder)."""
        return bool(self.code or self.holder)

    def describe(self, *, json: bool = False) -> str:
        """How a reason names it: ``409 A_RUN_ALREADY_ACTIVE``, ``423 CHAT_BUSY``, ``409``; with
        ``json``, ``JSON `` first when the answer carries a JSON body."""
        what = f"{self.status} {self.code}" if self.code else str(self.status)
        if self.pattern:
            what += f" matching /{self.pattern}/"
        return f"JSON {what}" if json and self.json else what


def conflict_answer(meta: Mapping[str, Any]) -> ConflictAnswer:
    """``meta.conflict`` read strictly; a missing table or field is the protocol's."""
    table = meta.get("conflict")
    if table is None:
        return ConflictAnswer()
    if not isinstance(table, Mapping):
        raise TypeError(f"meta: conflict={table!r} is not a table")
    default = ConflictAnswer()
    status = _int(table.get("status", default.status), "meta: conflict.status")
    code, holder, pattern = (table.get(key, getattr(default, key))
                             for key in ("code", "holder", "pattern"))
    for key, value in (("code", code), ("holder", holder), ("pattern", pattern)):
        if not isinstance(value, str):
            raise TypeError(f"meta: conflict.{key}={value!r} is not a string")
    return ConflictAnswer(status, code, holder, pattern)


# -- wording -------------------------------------------------------------------------------------

def _cite(indices: Iterable[int]) -> str:
    ops = sorted(set(indices))
    shown = ", ".join(str(i) for i in ops[:_CITE_LIMIT])
    more = f", … ({len(ops)} in all)" if len(ops) > _CITE_LIMIT else ""
    return f"op{'s' if len(ops) != 1 else ''} {shown}{more}"


def _listing(items: list[str]) -> str:
    more = f"; … and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return "; ".join(items[:_LIST_LIMIT]) + more


def _ms(ns: float) -> str:
    return f"{ns / NS_PER_MS:.1f} ms"


# -- combining verdicts --------------------------------------------------------------------------

_RANK: dict[str, int] = {"valid": 0, "unknown": 1, "invalid": 2}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """invalid > unknown > valid; no verdicts at all is ``unknown``."""
    result: Verdict | None = None
    for verdict in verdicts:
        if verdict not in _RANK:
            raise ValueError(f"verdict={verdict!r} is not one of {', '.join(VERDICTS)}")
        if result is None or _RANK[verdict] > _RANK[result]:
            result = verdict
    return "unknown" if result is None else result


def summarize(results: list[dict[str, CheckResult]]) -> dict[str, dict[str, int]]:
    """Per property (in order of first appearance): how many trials were valid/invalid/unknown."""
    counts: dict[str, dict[str, int]] = {}
    for trial_results in results:
        for name, result in trial_results.items():
            tally = counts.setdefault(name, {"valid": 0, "invalid": 0, "unknown": 0})
            tally[result.verdict] += 1
    return counts
