"""The ``turn`` requests of a trial read strictly, the winner and the losers, and when a run
ended. Pure.

Evidence conventions (what the race engine records)
---------------------------------------------------
- ``turn`` ops; invoke ``{role, chat_id, sent_ns}`` with ``nonce`` set. ``role`` is ``racer``
  (the race; several waves of racers may come in one trial, each with its own ``sent_ns``),
  ``setup`` (creates the chat before the race), ``holder`` (holds the chat before the race),
  ``released`` (the turn after the winner ended) or another scenario's role. Completion ``ok``:
  ``{status: int, code: str|None, json: bool, run_id, active_run_id, chat_id, headers_ns: int,
  end_ns: int|None, terminal: finish|error|abort|None, done: bool, frames: [type...],
  findings: [{code, message}...]}`` (``run_id`` / ``chat_id``: the start frame's ids;
  ``active_run_id``: the holder's run id in a conflict answer, read from the field the target
  profile names, ``activeRunId`` by default). ``info``: no answer within the phase bound (may
  hold ``error`` and partial ``status``/``headers_ns``/``run_id``). ``fail``: the request never
  reached the target. An invoke with no completion counts as ``info``; a racer invoke without
  ``sent_ns`` was sent at the invoke's ``time_ns``.
- ``stop``: invoke ``{run_id, role?}``; ok ``{status, stopped}``.
- The **winner** is the racer whose completion is ok, status 200, ``run_id`` set, with the
  smallest ``headers_ns`` (ties: the lower op index); failing that, the first ok 200 by
  ``headers_ns``. **Losers** are all other racers (every racer when there is no winner).
- A run **ends** at its stream's ``end_ns``; else at the first ``stop`` invoke aimed at it; else
  never (still held when the history ends). It is **active** from its turn's ``headers_ns``
  until it ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raceharness.core.checks.base import (
    ConflictAnswer,
    _int,
    _list,
    _once,
    _opt_int,
    _opt_str,
    _Where,
)
from raceharness.core.history import Op, Trial
from raceharness.core.protocol import pick_winner


@dataclass(frozen=True)
class Request:
    """A ``turn``: its invoke and its completion (None when it never completed)."""

    invoke: Op
    completion: Op | None

    def _where(self, key: str) -> _Where:
        return _Where(self.completion if self.completion is not None else self.invoke, key)

    def _answer(self, key: str) -> Any:
        c = self.completion
        return None if c is None or c.type == "fail" else c.get(key)

    @_once
    def index(self) -> int:
        return self.completion.index if self.completion is not None else self.invoke.index

    @_once
    def outcome(self) -> str:
        return "info" if self.completion is None else self.completion.type

    @property
    def nonce(self) -> str | None:
        return self.invoke.nonce

    @property
    def chat_id(self) -> Any:
        return self.invoke.get("chat_id")

    @_once
    def asked_chat(self) -> str | None:
        """The chat the request asked for (None: a new chat)."""
        return _opt_str(self.invoke.get("chat_id"), _Where(self.invoke, "chat_id"))

    @_once
    def started_chat(self) -> str | None:
        """The chat its start frame named."""
        return _opt_str(self._answer("chat_id"), self._where("chat_id"))

    @_once
    def chat(self) -> str | None:
        """The chat the turn was on: the one asked for, else the one its start frame named."""
        return self.asked_chat if self.asked_chat is not None else self.started_chat

    @_once
    def active_run_id(self) -> str | None:
        """The holder's run id a conflict answer named (its ``activeRunId`` by default)."""
        return _opt_str(self._answer("active_run_id"), self._where("active_run_id"))

    @_once
    def sent_ns(self) -> int:
        """When the request's last byte went out (the invoke's time when not recorded)."""
        sent = _opt_int(self.invoke.get("sent_ns"), f"op {self.invoke.index}: sent_ns")
        return self.invoke.time_ns if sent is None else sent

    @_once
    def status(self) -> int | None:
        if self.outcome == "ok":
            return _int(self._answer("status"), self._where("status"))
        return _opt_int(self._answer("status"), self._where("status"))

    @_once
    def headers_ns(self) -> int | None:
        if self.outcome == "ok":
            return _int(self._answer("headers_ns"), self._where("headers_ns"))
        return _opt_int(self._answer("headers_ns"), self._where("headers_ns"))

    @_once
    def end_ns(self) -> int | None:
        return _opt_int(self._answer("end_ns"), self._where("end_ns"))

    @_once
    def run_id(self) -> str | None:
        return _opt_str(self._answer("run_id"), self._where("run_id"))

    @_once
    def code(self) -> str | None:
        return _opt_str(self._answer("code"), self._where("code"))

    @_once
    def terminal(self) -> str | None:
        return _opt_str(self._answer("terminal"), self._where("terminal"))

    @_once
    def frames(self) -> list[str]:
        frames = _list(self._answer("frames") or [], self._where("frames"))
        return [_opt_str(f, self._where("frames[]")) or "" for f in frames]

    @_once
    def findings(self) -> list[dict[str, Any]]:
        return _list(self._answer("findings") or [], self._where("findings"))

    @_once
    def got_200(self) -> bool:
        return self.status == 200

    @_once
    def tracked(self) -> bool:
        """Got 200 and its start frame carried a run id."""
        return self.got_200 and self.run_id is not None


def turns(trial: Trial, role: str | None = None) -> list[Request]:
    """Every ``turn`` request (of one ``role`` if given), in invoke order."""
    every = trial.memo(("turns", None), lambda: [
        Request(inv, comp) for inv, comp in trial.completions("turn")])
    if role is None:
        return every
    return trial.memo(("turns", role), lambda: [r for r in every if r.invoke.get("role") == role])


def find_winner(racers: Iterable[Request]) -> Request | None:
    """protocol.pick_winner over the racers that completed with a 200."""
    return pick_winner(racers, won=lambda r: r.outcome == "ok" and r.got_200,
                       tracked=lambda r: r.run_id is not None,
                       order=lambda r: (r.headers_ns or 0, r.index))


def losers(racers: Iterable[Request], winner: Request | None) -> list[Request]:
    return [r for r in racers if winner is None or r.index != winner.index]


def _winner_run_id(trial: Trial) -> str | None:
    winner = find_winner(turns(trial, "racer"))
    return None if winner is None else winner.run_id


def stop_ops(trial: Trial, run_id: str | None) -> list[tuple[Op, Op | None]]:
    """The ``stop`` requests aimed at ``run_id``, in invoke order."""
    if run_id is None:
        return []
    return [(inv, comp) for inv, comp in trial.completions("stop") if inv.get("run_id") == run_id]


def _first_stop_ns(trial: Trial) -> dict[str, int]:
    """Run id → the time of the first ``stop`` invoke aimed at it."""
    def build() -> dict[str, int]:
        first: dict[str, int] = {}
        for inv, _ in trial.completions("stop"):
            run_id = inv.get("run_id")
            if isinstance(run_id, str):
                first.setdefault(run_id, inv.time_ns)
        return first
    return trial.memo(("first-stop",), build)


def run_end_ns(trial: Trial, turn: Request) -> float:
    """When ``turn``'s run ended: its stream's end, else the first stop aimed at it, else never
    (``math.inf``)."""
    end = turn.end_ns
    if end is not None:
        return end
    run_id = turn.run_id
    stopped = None if run_id is None else _first_stop_ns(trial).get(run_id)
    return math.inf if stopped is None else stopped


def winner_end_ns(trial: Trial, winner: Request) -> float:
    return run_end_ns(trial, winner)


def _json(r: Request) -> bool:
    return r.completion is not None and r.completion.get("json") is True


def _conflict(r: Request, answer: ConflictAnswer) -> bool:
    """``r`` was answered the target's conflict answer: its status, a JSON body when the answer
    carries one, and its code when there is one to check."""
    return (r.status == answer.status and (not answer.json or _json(r))
            and (not answer.code or r.code == answer.code)
            and (not answer.pattern or _body_matches(r, answer.pattern)))


def _body_matches(r: Request, pattern: str) -> bool:
    body = r.completion.value.get("body") if r.completion is not None else None
    return isinstance(body, str) and re.search(pattern, body) is not None


def _rate_limited(r: Request, answer: ConflictAnswer) -> bool:
    """``r`` was answered 429, and that was not the target's conflict answer (a target may
    answer a conflict with 429: then only a 429 that is not its conflict answer is a rate
    limit)."""
    return r.outcome == "ok" and r.status == 429 and not (
        answer.status == 429 and _conflict(r, answer))


def _statuses(reqs: Iterable[Request]) -> str:
    counts: dict[str, int] = {}
    for r in reqs:
        key = str(r.status) if r.outcome == "ok" else r.outcome
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))


def _ops(reqs: Iterable[Request]) -> tuple[int, ...]:
    return tuple(sorted({r.index for r in reqs}))
