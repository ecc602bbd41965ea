"""Pure checkers: one function per property of ``conformance.md`` §2, each a function of a Trial.

Theory of operation
-------------------
Jepsen's checker model (``checker.clj``): a checker reads the whole evidence of one trial (ops,
provider ledger, database snapshots) and returns a :class:`CheckResult` — ``valid``, ``invalid``
or ``unknown`` — with a one-line reason and the offending operations. ``unknown`` means the
evidence cannot decide (the race did not happen, a request never reached the target, there is no
provider or database access); missing evidence is never ``valid``. A checker that raises (a bug
here, or a malformed record) becomes ``unknown`` "checker crashed: <ExcType>: <msg>" in
:func:`check_trial`, so one bad record never hides the other verdicts. Checkers compose by name
through :data:`CHECKERS`. Evidence is read strictly: a field of the wrong type raises
``TypeError`` naming the op, the field and the value.

Evidence conventions (what the race engine records)
---------------------------------------------------
- ``turn`` ops; invoke ``{role, chat_id, sent_ns}`` with ``nonce`` set. ``role`` is ``racer``
  (the race; several waves of racers may come in one trial, each with its own ``sent_ns``),
  ``setup`` (creates the chat before the race), ``holder`` (holds the chat before the race),
  ``released`` (the turn after the winner ended) or another scenario's role. Completion ``ok``:
  ``{status: int, code: str|None, json: bool, run_id, active_run_id, chat_id, headers_ns: int,
  end_ns: int|None, terminal: finish|error|abort|None, done: bool, frames: [type...],
  findings: [{code, message}...]}`` (``run_id`` / ``chat_id``: the start frame's ids;
  ``active_run_id``: a 409's ``activeRunId``). ``info``: no answer within the phase bound (may
  hold ``error`` and partial ``status``/``headers_ns``/``run_id``). ``fail``: the request never
  reached the target. An invoke with no completion counts as ``info``; a racer invoke without
  ``sent_ns`` was sent at the invoke's ``time_ns``.
- ``stop``: invoke ``{run_id, role?}``; ok ``{status, stopped}``.
- ``runs`` (also ``run``, same shape): invoke ``{chat_id, phase}``; ok ``{status, runs: [{id,
  status}...], truncated?: bool}``. Only ok answers with status 200 are observations. Phases:
  ``before``, ``held``, ``after-stop`` (the last answer of a poll after the winner's stop),
  ``after``, ``cleanup`` (one answer per chat of the trial at its end), ``before-foreign`` /
  ``after-foreign``, ``before-stale`` / ``after-stale``; database snapshots carry the same
  labels. A ``/runs`` answer lists every run of its chat unless ``truncated``; a ``/run``
  answer shows only the chat's latest run; a database snapshot lists every run of its chat (the
  chat its rows name: a snapshot without rows names none, and proves no absence). See
  :class:`Observation`.
- ``trial.meta``: ``n``, ``losers_fast_bound_ms`` (default 1000), ``stop_bound_ms`` (default
  2000), ``release_ns``; ``interrupted: true`` when the trial was cut off (set by the engine, or
  by ``history.loads_trials`` for a trial that never said ``ended``); ``conflict_holder_id:
  false`` when the target's 409 cannot name the holder (absent: the protocol's 409, which
  carries ``activeRunId``). ``trial.provider``: the ledger or None; an entry with
  ``complete=False`` is a *contact* (a connection closed before a whole request, no nonce);
  ``trial.db``: snapshots or None.
- The **winner** is the racer whose completion is ok, status 200, ``run_id`` set, with the
  smallest ``headers_ns`` (ties: the lower op index); failing that, the first ok 200 by
  ``headers_ns``. **Losers** are all other racers (every racer when there is no winner).
- A run **ends** at its stream's ``end_ns``; else at the first ``stop`` invoke aimed at it; else
  never (still held when the history ends). It is **active** from its turn's ``headers_ns``
  until it ends.

Decisions
---------
- A request is cited by the index of its completion op (its invoke's when it never completed).
  Provider calls and database rows are not ops: they are named in the reason.
- A trial with ``meta.interrupted`` is ``unknown`` for every property: nothing a cut-off trial
  recorded can decide.
- A racer "got 200" when status 200 was seen, on an ok *or* an info completion (headers came,
  the stream did not end): ``race/one-winner`` counts both.
- ``race/overlap-achieved`` is never ``invalid``: a race that did not happen proves nothing.
- ``race/losers-409``: ``activeRunId`` must name a known run of the chat (the ``run_id`` of any
  200 turn on it, or a run an observation of it showed active); ``null`` is a violation while a
  known run was active at the loser's answer, and allowed otherwise (the holder may have ended).
  With ``meta.conflict_holder_id`` false the id is not checked and the property cannot be
  ``valid``. No racer got 200 on a chat nothing held (no ``holder`` turn got 200, no observation
  showed a run active): every 409 there is a false conflict.
- ``race/no-untracked-run``: the winner must be reported active by each ``held`` observation
  that covers it; every other 200 stream with a ``run_id`` (any role) must be listed by at least
  one observation of its chat, in any phase and status. Absent from an observation that lists
  every run of the chat, taken after the stream's headers came: ``invalid``; never covered by
  such an observation: ``unknown``. A 200 without ``runId`` of any role is ``invalid``. A
  provider call is accounted for when its nonce belongs to a turn of any role that got 200 with
  a ``run_id`` (that turn's run is then checked as above); contacts are not calls.
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
- A racer whose request never reached the target (fail) makes the properties about it
  ``unknown``, never ``invalid``; a racer with no answer (info) is a hang: ``invalid`` for the
  loser properties, undecided for ``race/one-winner``.
- Without a winner, ``race/losers-fast`` can only be ``invalid`` (a slow or missing answer) or
  ``unknown``; ``race/no-loser-writes`` is ``unknown`` (no run id to attribute the rows to).
- ``race/winner-stoppable``: ``/stop`` with no answer (info) is ``invalid`` (a hang), one that
  never reached the target (fail) is ``unknown``; a provider ledger without the winner's call is
  ``unknown`` (``race/winner-provider-call`` owns that failure); a provider disconnect that
  comes too late or never is reported on the stop's completion op. ``valid`` needs an
  observation after the stop (phase ``after-stop`` or ``after``) showing the run ``aborted``;
  one showing it active or otherwise ended, or one listing every run of its chat without it, is
  ``invalid``.
- ``stream/well-formed``: a start frame naming another chat than the one requested (or none)
  is malformed.
- ``chats/independent``: 409 is a false conflict, any other non-200 except 429 is ``invalid``
  too; 429, info and fail are ``unknown``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from raceharness.core.history import Op, ProviderCall, Trial

Verdict = Literal["valid", "invalid", "unknown"]
VERDICTS: tuple[Verdict, ...] = ("valid", "invalid", "unknown")
RUN_ALREADY_ACTIVE = "A_RUN_ALREADY_ACTIVE"
ACTIVE_RUN_STATUSES = frozenset({"pending", "running"})
TERMINAL_FRAMES = frozenset({"finish", "error", "abort"})
OBSERVER_FS = ("runs", "run")
AFTER_STOP_PHASES = ("after-stop", "after")
EMPTY_LEDGER = "the provider ledger is empty: nothing shows the target calls the fake provider"
INTERRUPTED = ("the trial was interrupted before it completed (Ctrl-C): nothing it recorded "
               "can decide")
DEFAULT_LOSERS_FAST_BOUND_MS = 1000
DEFAULT_STOP_BOUND_MS = 2000
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
        """A 409's ``activeRunId``."""
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
    oks = [r for r in racers if r.outcome == "ok" and r.got_200]
    pool = [r for r in oks if r.run_id is not None] or oks
    return min(pool, key=lambda r: (r.headers_ns, r.index)) if pool else None


def losers(racers: Iterable[Request], winner: Request | None) -> list[Request]:
    return [r for r in racers if winner is None or r.index != winner.index]


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


def _statuses(reqs: Iterable[Request]) -> str:
    counts: dict[str, int] = {}
    for r in reqs:
        key = str(r.status) if r.outcome == "ok" else r.outcome
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))


def _ops(reqs: Iterable[Request]) -> tuple[int, ...]:
    return tuple(sorted({r.index for r in reqs}))


# -- the checkers --------------------------------------------------------------------------------

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
    undecided = [r for r in racers if r.outcome != "ok" or r.status == 429]
    if undecided:
        return CheckResult(prop, "unknown", f"no 200, and {len(undecided)} racer(s) undecided by "
                           f"info, fail or 429 ({_statuses(racers)})", _ops(undecided))
    return CheckResult(prop, "invalid", f"no winner: none of {len(racers)} racers got 200 "
                       f"({_statuses(racers)})", _ops(racers))


def losers_409(trial: Trial) -> CheckResult:
    prop = "race/losers-409"
    racers = turns(trial, "racer")
    lost = losers(racers, find_winner(racers))
    if not lost:
        return CheckResult(prop, "unknown", f"no losers among {len(racers)} racer(s)")
    bad: list[Request] = []
    undecided: list[Request] = []
    conflicts: list[Request] = []
    for r in lost:
        if r.outcome == "fail" or (r.outcome == "ok" and r.status == 429):
            undecided.append(r)
        elif r.outcome == "info" or not (
                r.status == 409 and _json(r) and r.code == RUN_ALREADY_ACTIVE):
            bad.append(r)
        else:
            conflicts.append(r)
    if bad:
        what = [f"op {r.index}: no answer" if r.outcome == "info"
                else f"op {r.index}: {r.status} code={r.code} json={_json(r)}" for r in bad]
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(lost)} losers not a JSON 409 "
                           f"{RUN_ALREADY_ACTIVE}: {_listing(what)}", _ops(bad))
    chats = [_chat_of(r) for r in conflicts]
    held = {chat: _held(trial, chat) for chat in set(chats)}  # 100,000 losers share a few
    false = [r for r, chat in zip(conflicts, chats, strict=True) if not held[chat]]
    if false:
        return CheckResult(prop, "invalid", f"no racer got 200 and nothing held the chat, yet "
                           f"{len(false)} racer(s) got 409: false conflicts "
                           f"({_cite(_ops(false))})", _ops(false))
    named = trial.meta.get("conflict_holder_id") is not False
    wrong: list[tuple[Request, str]] = []
    known = {chat: _known_runs(trial, chat) for chat in held} if named else {}
    tracked = _tracked_runs(trial)
    for r, chat in zip(conflicts, chats, strict=True) if named else ():
        assert r.completion is not None  # a 409 was answered
        active = r.completion.value.get("active_run_id")
        if active is not None and not isinstance(active, str):
            active = r.active_run_id  # the strict reader names the op
        if active is not None:
            if active not in known[chat]:
                wrong.append((r, f"op {r.index}: activeRunId {active} names no run that held "
                                 "the chat"))
        elif (holder := _active_at(trial, r, tracked.get(chat, ()))) is not None:
            wrong.append((r, f"op {r.index}: activeRunId null while run {holder} was active"))
    if wrong:
        return CheckResult(prop, "invalid", f"{len(wrong)} of {len(lost)} losers' 409 named the "
                           f"wrong holder (protocol §2.3/§2.5: the holder's id, null only once "
                           f"it ended): {_listing([w for _, w in wrong])}",
                           _ops(r for r, _ in wrong))
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} of {len(lost)} losers got 429 or "
                           f"never reached the target ({_cite(_ops(undecided))})", _ops(undecided))
    if not named:
        return CheckResult(prop, "unknown", f"all {len(lost)} losers got 409 "
                           f"{RUN_ALREADY_ACTIVE}, but the target's conflict answer cannot name "
                           "the holder (meta conflict_holder_id: false): activeRunId unchecked")
    return CheckResult(prop, "valid", f"all {len(lost)} losers got 409 {RUN_ALREADY_ACTIVE} "
                       "naming a run that held the chat")


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


def _chat_of(r: Request) -> str | None:
    """``r.chat``, read without its descriptors for the common case (a chat asked for)."""
    chat = r.invoke.value.get("chat_id")
    return chat if isinstance(chat, str) else r.chat


def _json(r: Request) -> bool:
    return r.completion is not None and r.completion.get("json") is True


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


def _untracked_calls(trial: Trial, provider: list[ProviderCall]) -> tuple[list[str], set[int]]:
    by_nonce: dict[str, Request] = {}
    for t in turns(trial):
        if t.nonce is not None:
            by_nonce.setdefault(t.nonce, t)
    problems: list[str] = []
    ops: set[int] = set()
    for call in provider:
        if _opt_bool(call.complete, f"provider call {call.index}: complete") is False:
            continue  # a contact: no request, no run to account for
        turn = by_nonce.get(call.nonce) if call.nonce is not None else None
        if call.nonce is None:
            problems.append(f"call {call.index}: no nonce")
        elif turn is None:
            problems.append(f"call {call.index}: unknown nonce {call.nonce!r}")
        elif not turn.tracked:
            problems.append(f"call {call.index}: for op {turn.index}, which got no 200 with runId")
            ops.add(turn.index)
    return problems, ops


def no_untracked_run(trial: Trial) -> CheckResult:
    prop = "race/no-untracked-run"
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    streams = [t for t in turns(trial) if t.outcome != "fail" and t.got_200]
    blind = [t for t in streams if t.run_id is None]
    problems = [f"op {t.index}: 200 without runId" for t in blind]
    ops = {t.index for t in blind}
    if trial.provider is not None:
        call_problems, call_ops = _untracked_calls(trial, trial.provider)
        if call_problems:
            problems.append("a provider call no tracked run accounts for: "
                            + ", ".join(call_problems[:_LIST_LIMIT]))
            ops |= call_ops
    seen_active = False
    run_id = winner.run_id if winner is not None else None
    if winner is not None and run_id is not None:
        for o in _labelled(trial, "held"):
            if not o.covers(winner.chat):
                continue
            if run_id in o.statuses:
                status = o.statuses[run_id]
                if status in ACTIVE_RUN_STATUSES:
                    seen_active = True
                    continue
            elif not o.lists_all_of(winner.chat):
                continue  # it does not show every run of the chat: it says nothing of this one
            else:
                status = None
            problems.append(f"{o.name}: winner run {run_id} "
                            f"{'absent' if status is None else status} while held")
            if o.where is not None:
                ops.add(o.where)
    uncovered: dict[str, Request] = {}
    for t in streams:
        if t.run_id is None or (winner is not None and t.index == winner.index):
            continue
        reported = _unreported_by(trial, t.run_id, t.chat, t.headers_ns)
        if isinstance(reported, Observation):
            problems.append(f"op {t.index}: runId {t.run_id} is reported by no observation: "
                            f"untracked ({reported.name} lists every run of its chat)")
            ops.add(t.index)
        elif reported is None:
            uncovered.setdefault(t.run_id, t)
    if problems:
        return CheckResult(prop, "invalid", _listing(problems), tuple(sorted(ops)))
    missing = []
    if run_id is None:
        missing.append("no winner with a runId")
    elif not seen_active:
        missing.append(f"no held-phase /runs answer or db snapshot shows winner run {run_id}")
    if uncovered:
        missing.append("no observation covers run " + ", ".join(
            f"{r} (op {t.index})" for r, t in list(uncovered.items())[:_LIST_LIMIT])
            + (f" and {len(uncovered) - _LIST_LIMIT} more" if len(uncovered) > _LIST_LIMIT
               else ""))
    if trial.provider is None:
        missing.append("no provider access")
    elif _ledger_empty(trial):
        missing.append(EMPTY_LEDGER)
    if missing:
        return CheckResult(prop, "unknown", "missing evidence: " + "; ".join(missing))
    others = len({t.run_id for t in streams} - {run_id})
    return CheckResult(prop, "valid", f"winner run {run_id} reported active while held; "
                       f"{others} other run(s) of 200 streams reported; all "
                       f"{len(trial.provider or ())} provider call(s) belong to tracked runs")


def no_loser_writes(trial: Trial) -> CheckResult:
    prop = "race/no-loser-writes"
    if trial.db is None:
        return CheckResult(prop, "unknown", "no database access")
    before, after = trial.db_snapshot("before"), trial.db_snapshot("after")
    if before is None or after is None:
        absent = [label for label, s in (("before", before), ("after", after)) if s is None]
        return CheckResult(prop, "unknown", f"no {' or '.join(absent)} db snapshot")
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    if winner is None or winner.run_id is None:
        return CheckResult(prop, "unknown", "no winner with a runId to attribute the writes to")
    new_runs = {r.id for r in after.runs} - {r.id for r in before.runs}
    old_messages = {m.id for m in before.messages}
    new_roles = [m.role for m in after.messages if m.id not in old_messages]
    users, assistants = new_roles.count("user"), new_roles.count("assistant")
    if new_runs == {winner.run_id} and users == 1 and assistants == 1 and len(new_roles) == 2:
        return CheckResult(prop, "valid", f"the race added the winner's run {winner.run_id}, one "
                           "user and one assistant message")
    others = len(new_roles) - users - assistants
    extra = new_runs - {winner.run_id}
    return CheckResult(prop, "invalid", f"the race added {len(new_runs)} run(s) "
                       f"({'with' if winner.run_id in new_runs else 'without'} the winner's "
                       f"{winner.run_id}), {users} user, {assistants} assistant and {others} other "
                       "message(s); expected 1 run, 1 user, 1 assistant",
                       _ops(r for r in racers if r.run_id in extra))


def winner_stoppable(trial: Trial) -> CheckResult:
    prop = "race/winner-stoppable"
    winner = find_winner(turns(trial, "racer"))
    if winner is None or winner.run_id is None:
        return CheckResult(prop, "unknown", "no winner with a runId")
    run_id = winner.run_id
    stops = stop_ops(trial, run_id)
    if not stops:
        return CheckResult(prop, "unknown", f"no /stop aimed at the winner's run {run_id}")
    stop, answer = stops[0]
    if answer is not None and answer.type == "fail":
        return CheckResult(prop, "unknown", f"op {answer.index}: /stop never reached the target",
                           (answer.index,))
    problems: list[str] = []
    ops: set[int] = set()
    missing: list[str] = []
    if answer is None or answer.type == "info":
        index = stop.index if answer is None else answer.index
        problems.append(f"op {index}: /stop got no answer")
        ops.add(index)
    else:
        status = _int(answer.get("status"), f"op {answer.index}: status")
        if status != 200 or answer.get("stopped") is not True:
            problems.append(f"op {answer.index}: /stop answered {status} "
                            f"stopped={answer.get('stopped')!r}")
            ops.add(answer.index)
    if winner.terminal != "abort":
        problems.append(f"op {winner.index}: the winner's stream ended {winner.terminal!r}, "
                        "not 'abort'")
        ops.add(winner.index)
    aborted: list[Observation] = []
    for o in _labelled(trial, *AFTER_STOP_PHASES):
        if o.time_ns < stop.time_ns or not o.covers(winner.chat):
            continue
        if run_id in o.statuses:
            run_status = o.statuses[run_id]
            if run_status == "aborted":
                aborted.append(o)
                continue
            why = ("still active after the stop" if run_status in ACTIVE_RUN_STATUSES
                   else "not aborted after the stop")
            problems.append(f"{o.name}: run {run_id} is {run_status!r}: {why}")
        elif o.lists_all_of(winner.chat):
            problems.append(f"{o.name}: run {run_id} gone from the list of its chat after the "
                            "stop")
        else:
            continue
        if o.where is not None:
            ops.add(o.where)
    if not aborted:
        missing.append(f"no observation after the stop shows run {run_id} aborted")
    disconnect = ""
    if trial.provider is not None:
        bound_ms = _number(trial.meta.get("stop_bound_ms", DEFAULT_STOP_BOUND_MS),
                           "meta: stop_bound_ms")
        calls = [c for c in trial.provider if c.nonce == winner.nonce and winner.nonce is not None]
        late_calls = False
        for call in calls:
            gone = call.disconnected_ns
            if gone is None or gone - stop.time_ns > bound_ms * NS_PER_MS:
                late = "never" if gone is None else f"{_ms(gone - stop.time_ns)} after the stop"
                problems.append(f"the provider kept streaming: call {call.index} disconnected "
                                f"{late} (bound {bound_ms:g} ms)")
                ops.add(answer.index if answer is not None else stop.index)
                late_calls = True
        if calls and not late_calls:
            disconnect = "; provider disconnected " + _ms(max(
                (c.disconnected_ns or 0) - stop.time_ns for c in calls)) + " after the stop"
        elif not calls:
            missing.append("no provider call for the winner to see the disconnect of")
    else:
        missing.append("no provider access to see the provider disconnect")
    if problems:
        return CheckResult(prop, "invalid", _listing(problems), tuple(sorted(ops)))
    if missing:
        return CheckResult(prop, "unknown", "stop answered stopped:true and the stream ended "
                           "abort, but " + "; ".join(missing))
    return CheckResult(prop, "valid", f"/stop answered stopped:true, the stream ended "
                       f"abort{disconnect}; {aborted[0].name} shows run {run_id} aborted")


def released(trial: Trial) -> CheckResult:
    prop = "race/released"
    after = turns(trial, "released")
    answered = [t for t in after if t.outcome == "ok"]
    bad = [t for t in answered if not (t.tracked and t.terminal == "finish")]
    if bad:
        what = [f"op {t.index}: {t.status} terminal={t.terminal!r}" for t in bad]
        return CheckResult(prop, "invalid", f"the turn after the winner ended was refused or did "
                           f"not finish: {_listing(what)}", _ops(bad))
    if not answered:
        return CheckResult(prop, "unknown", "no answered turn after the winner ended",
                           _ops(after))
    return CheckResult(prop, "valid", f"the turn after the winner ended got 200 and finished "
                       f"({_cite(_ops(answered))})")


def _stream_problems(t: Request) -> list[str]:
    frames, findings = t.frames, t.findings
    problems: list[str] = []
    if findings:
        first = findings[0]
        problems.append(f"finding {first.get('code') if isinstance(first, dict) else first}")
    if not frames or frames[0] != "start":
        problems.append(f"first frame {frames[0] if frames else None!r}, not 'start'")
    if t.run_id is None:
        problems.append("no runId")
    asked = t.asked_chat
    if asked is not None and t.started_chat != asked:
        problems.append("no chatId" if t.started_chat is None
                        else f"chatId {t.started_chat}, requested {asked}")
    terminals = sum(1 for f in frames if f in TERMINAL_FRAMES)
    if terminals != 1:
        problems.append(f"{terminals} terminal frames")
    if t.completion is None or t.completion.get("done") is not True or frames[-1:] != ["[DONE]"]:
        problems.append("no [DONE] last")
    return problems


def stream_well_formed(trial: Trial) -> CheckResult:
    prop = "stream/well-formed"
    streams = [t for t in turns(trial) if t.outcome == "ok" and t.got_200]
    if not streams:
        return CheckResult(prop, "unknown", "no 200 stream to check")
    bad = [(t, p) for t in streams if (p := _stream_problems(t))]
    if bad:
        what = [f"op {t.index} ({', '.join(p)})" for t, p in bad]
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(streams)} 200 streams malformed: "
                           f"{_listing(what)}", _ops(t for t, _ in bad))
    return CheckResult(prop, "valid", f"all {len(streams)} 200 streams well formed")


def chats_independent(trial: Trial) -> CheckResult:
    prop = "chats/independent"
    racers = turns(trial, "racer")
    chats = [r.chat_id for r in racers]
    if len(racers) < 2 or None in chats or len(set(chats)) != len(chats):
        return CheckResult(prop, "unknown", f"not a distinct-chat race: {len(racers)} racer(s) "
                           f"on {len(set(chats))} chat(s)")
    conflicts = [r for r in racers if r.outcome == "ok" and r.status == 409]
    if conflicts:
        return CheckResult(prop, "invalid", f"false conflict: {len(conflicts)} of {len(racers)} "
                           f"turns on distinct chats got 409 ({_cite(_ops(conflicts))})",
                           _ops(conflicts))
    refused = [r for r in racers if r.outcome == "ok" and r.status not in (200, 429)]
    if refused:
        return CheckResult(prop, "invalid", f"{len(refused)} of {len(racers)} turns on distinct "
                           f"chats refused ({_statuses(refused)})", _ops(refused))
    undecided = [r for r in racers if r.outcome != "ok" or r.status == 429]
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} of {len(racers)} turns undecided "
                           f"({_statuses(undecided)})", _ops(undecided))
    return CheckResult(prop, "valid", f"all {len(racers)} turns on distinct chats got 200")



def chats_one_winner_each(trial: Trial) -> CheckResult:
    """Several simultaneous turns on each of several chats: per chat, exactly one tracked 200
    and a JSON 409 A_RUN_ALREADY_ACTIVE for every other (contention stays per chat)."""
    prop = "chats/one-winner-each"
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
            if r.outcome != "ok" or r.status == 429:
                undecided.append(r)
            elif not (r.status == 409 and _json(r) and r.code == RUN_ALREADY_ACTIVE):
                problems.append(f"op {r.index}: {r.status} code={r.code}")
                offending.append(r)
    if problems:
        return CheckResult(prop, "invalid", f"{len(problems)} problem(s) across {len(by_chat)} "
                           f"chats: {_listing(problems)}", _ops(offending))
    if undecided:
        return CheckResult(prop, "unknown", f"{len(undecided)} of {len(racers)} turns undecided "
                           f"({_statuses(undecided)})", _ops(undecided))
    return CheckResult(prop, "valid", f"each of {len(by_chat)} chats had exactly one winner; "
                       f"the other {len(racers) - len(by_chat)} turns got 409")

# -- composition ---------------------------------------------------------------------------------

RACE_CHECKERS: dict[str, Callable[[Trial], CheckResult]] = {
    "race/overlap-achieved": overlap_achieved,
    "race/one-winner": one_winner,
    "race/losers-409": losers_409,
    "race/losers-fast": losers_fast,
    "race/no-loser-provider-call": no_loser_provider_call,
    "race/winner-provider-call": winner_provider_call,
    "race/no-untracked-run": no_untracked_run,
    "race/no-loser-writes": no_loser_writes,
    "race/winner-stoppable": winner_stoppable,
    "race/released": released,
    "stream/well-formed": stream_well_formed,
    "chats/independent": chats_independent,
    "chats/one-winner-each": chats_one_winner_each,
}
SINGLE_CHAT_RACE: tuple[str, ...] = tuple(p for p in RACE_CHECKERS if not p.startswith("chats/"))
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
