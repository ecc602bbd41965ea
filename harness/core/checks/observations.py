"""What the service showed of a chat's runs: one :class:`Observation` per ``/runs`` or ``/run``
answer and per database snapshot. Pure.

Evidence conventions (what the race engine records)
---------------------------------------------------
- ``runs`` (also ``run``, same shape): invoke ``{chat_id, phase}``; ok ``{status, runs: [{id,
  status}...], truncated?: bool}``. Only ok answers with status 200 are observations. Phases:
  ``before``, ``held``, ``after-stop`` (the last answer of a poll after the winner's stop),
  ``after``, ``cleanup`` (one answer per chat of the trial at its end), ``before-foreign`` /
  ``after-foreign``, ``before-stale`` / ``after-stale``; database snapshots carry the same
  labels. A ``/runs`` answer lists every run of its chat unless ``truncated``; a ``/run``
  answer shows only the chat's latest run; a database snapshot lists every run of its chat (the
  chat its rows name: a snapshot without rows names none, and proves no absence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raceharness.core.checks.base import _int, _list, _opt_bool, _opt_str
from raceharness.core.history import Trial

OBSERVER_FS = ("runs", "run")


@dataclass(frozen=True)
class Observation:
    """What one observer answer (an ok ``runs``/``run`` with status 200) or one database
    snapshot showed of a chat's runs."""

    where: int | None           # the answer's op index; None for a database snapshot
    label: Any                  # the invoke's phase, the snapshot's label
    chat_id: str | None         # the chat observed (a snapshot: the chat its rows name)
    time_ns: int                # when it was asked for (the invoke), or taken
    statuses: dict[str, str | None]  # run id → status, for every run it lists
    complete: bool              # it lists every run of its chat: absence means "no such run"

    @property
    def name(self) -> str:
        return f"op {self.where}" if self.where is not None else f"db {self.label} snapshot"

    def covers(self, chat: str | None) -> bool:
        """It may show runs of ``chat`` (either side unknown: it may)."""
        return self.chat_id is None or chat is None or self.chat_id == chat

    def lists_all_of(self, chat: str | None) -> bool:
        """It lists every run of ``chat``: a run of ``chat`` it does not list did not exist."""
        return self.complete and chat is not None and self.chat_id == chat


def observations(trial: Trial) -> list[Observation]:
    """Every observation of the trial: observer answers in invoke order, then snapshots."""
    return trial.memo(("observations",), lambda: _observations(trial))


def _observations(trial: Trial) -> list[Observation]:
    seen: list[Observation] = []
    for f in OBSERVER_FS:
        for inv, comp in trial.completions(f):
            if comp is None or comp.type != "ok":
                continue
            if _int(comp.get("status"), f"op {comp.index}: status") != 200:
                continue
            statuses: dict[str, str | None] = {}
            for row in _list(comp.get("runs"), f"op {comp.index}: runs"):
                if not isinstance(row, dict):
                    raise TypeError(f"op {comp.index}: runs[]={row!r} is not an object")
                run_id = _opt_str(row.get("id"), f"op {comp.index}: runs[].id")
                if run_id is not None:
                    statuses[run_id] = _opt_str(row.get("status"),
                                                f"op {comp.index}: runs[].status")
            truncated = _opt_bool(comp.get("truncated"), f"op {comp.index}: truncated")
            seen.append(Observation(
                comp.index, inv.get("phase"),
                _opt_str(inv.get("chat_id"), f"op {inv.index}: chat_id"), inv.time_ns, statuses,
                complete=f == "runs" and not truncated))
    for snap in trial.db or ():
        chats = {r.chat_id for r in snap.runs} | {m.chat_id for m in snap.messages}
        chat = next(iter(chats)) if len(chats) == 1 else None
        seen.append(Observation(None, snap.label, chat, snap.time_ns,
                                {r.id: r.status for r in snap.runs}, complete=chat is not None))
    seen.sort(key=lambda o: (o.where is None, o.where or 0))
    return seen


def _listed_by(trial: Trial) -> dict[str, list[Observation]]:
    """Run id → the observations that list it."""
    def build() -> dict[str, list[Observation]]:
        by_run: dict[str, list[Observation]] = {}
        for o in observations(trial):
            for run_id in o.statuses:
                by_run.setdefault(run_id, []).append(o)
        return by_run
    return trial.memo(("listed-by",), build)


def _labelled(trial: Trial, *labels: str) -> list[Observation]:
    return [o for o in observations(trial) if o.label in labels]


def _unreported_by(trial: Trial, run_id: str, chat: str | None,
                   since_ns: int | None) -> Observation | None | bool:
    """Whether the service reports ``run_id`` (of ``chat``): ``True`` when an observation of the
    chat lists it; else the first observation listing every run of the chat, taken at or after
    ``since_ns``, that does not (it contradicts the run); else ``None`` (never covered)."""
    if any(o.covers(chat) for o in _listed_by(trial).get(run_id, ())):
        return True
    if since_ns is None:
        return None
    return next((o for o in observations(trial)
                 if o.lists_all_of(chat) and o.time_ns >= since_ns), None)
