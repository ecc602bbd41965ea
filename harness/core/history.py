"""The history of a race: what happened, recorded as facts, judged later by pure checkers.

Theory of operation
-------------------
A *trial* is one race. Its evidence is three things, all plain data:

- ``ops`` — Jepsen-style operations. Every client action is an ``invoke`` followed by exactly one
  completion with the same ``process`` and ``f``: ``ok`` (an answer arrived), ``fail`` (the action
  certainly did not happen, e.g. the connection was refused) or ``info`` (the outcome is unknown,
  e.g. a timeout: the request may have been processed). Times are monotonic nanoseconds on the
  harness host (``CLOCK_MONOTONIC``; comparable with the reference server's on the same host).
- ``provider`` — the fake provider's ledger: one :class:`ProviderCall` per call it received,
  attributed to a request by the nonce in the last user message. ``None`` when the harness had no
  provider access (the target is not pointed at the fake provider): provider properties are then
  ``unknown``, never ``valid``. A connection that closed before it sent a complete request is a
  *contact*, recorded with ``complete=False``, ``nonce=None``, ``arrival_ns`` = when it
  connected and ``disconnected_ns`` = when it closed.
- ``db`` — read-only database snapshots, or ``None`` without ``--dsn``.

This module is pure: no sockets, no clock, no database. It defines the records and their JSON
Lines form (one object per line, written as things happen, so a crashed run leaves an analysable
prefix).

Operation functions (``f``) and their ``value`` keys
---------------------------------------------------
``turn`` (a stream request): invoke ``{chat_id, role: "racer"|"setup"|"released"|"other",
sent_ns}``; completion ``{status, code, run_id, active_run_id, chat_id, headers_ns,
first_frame_ns, end_ns, frames: [type...], terminal, done, findings: [...], error}``.
``stop``: invoke ``{run_id?, chat_id?}``; ok ``{status, stopped}``.
``runs`` / ``run``: invoke ``{chat_id, phase}``; ok ``{status, runs: [{id, status}...],
truncated?: bool}`` (``truncated``: the service's list had more pages than were read).

Schema versions
---------------
The run record names the schema. Version 2 (this one) adds ``ProviderCall.complete`` (default
``True``) and the end-of-trial marker: the engine writes the completed trial meta with
``ended: true`` when a trial completes, and ``interrupted: true`` when it was cut off. Loading a
version-2 file, a trial whose meta never got ``ended: true`` (and was not ``skipped``) is marked
``interrupted`` (the run was killed before it could say so). Version 1 files load as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO, TypeVar

T = TypeVar("T")
OpType = Literal["invoke", "ok", "fail", "info"]
OP_TYPES: tuple[str, ...] = ("invoke", "ok", "fail", "info")
SCHEMA_VERSION = 2
SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)  # what loads_trials reads


class HistoryError(ValueError):
    """A history file or record is malformed (names the line and the field)."""


@dataclass(frozen=True)
class Op:
    index: int
    type: OpType
    f: str
    process: int
    time_ns: int
    nonce: str | None = None
    value: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.value.get(key, default)


@dataclass(frozen=True)
class ProviderCall:
    """One call the fake provider received."""

    index: int
    nonce: str | None          # from the last user message; None if it carried no marker
    arrival_ns: int
    tokens_sent: int = 0
    first_token_ns: int | None = None
    disconnected_ns: int | None = None  # the caller went away before the end
    completed_ns: int | None = None     # the provider ended the stream itself
    mode: str = "finish"
    complete: bool = True  # False: a contact, the connection closed before a whole request


@dataclass(frozen=True)
class RunRow:
    id: str
    chat_id: str
    status: str
    created_at_us: int | None = None


@dataclass(frozen=True)
class MessageRow:
    id: str
    chat_id: str
    role: str
    status: str
    content: str = ""


@dataclass(frozen=True)
class DbSnapshot:
    """The rows of the raced chat at one moment (``label``: "before", "held", "after")."""

    label: str
    time_ns: int
    runs: tuple[RunRow, ...] = ()
    messages: tuple[MessageRow, ...] = ()


@dataclass
class Trial:
    """All evidence of one trial. ``meta`` holds the configuration and release timing:
    ``{trial, seed, n, sync, chat_id, release_ns, send_spread_ns, losers_fast_bound_ms,
    target, provider_access: bool, db_access: bool, ended: bool, interrupted: bool,
    conflict_holder_id: bool, ...}`` (``ended``: the trial completed; ``interrupted``: it was
    cut off; ``conflict_holder_id: false``: the target's 409 cannot name the holder)."""

    meta: dict[str, Any]
    ops: list[Op] = field(default_factory=list)
    provider: list[ProviderCall] | None = None
    db: list[DbSnapshot] | None = None
    _memo: dict[Any, tuple[int, Any]] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """``compute()``, remembered for this trial until an op is appended: every checker
        derives the same views (pairs, requests), and a 100,000-op history must not rebuild
        them once per property. Callers must not mutate what they get."""
        hit = self._memo.get(key)
        if hit is not None and hit[0] == len(self.ops):
            return hit[1]  # type: ignore[no-any-return]
        value = compute()
        self._memo[key] = (len(self.ops), value)
        return value

    def completions(self, f: str | None = None) -> list[tuple[Op, Op | None]]:
        """Every invoke with its completion (None if it never completed)."""
        return self.memo(("completions", f), lambda: self._pair(f))

    def _pair(self, f: str | None) -> list[tuple[Op, Op | None]]:
        pending: dict[tuple[int, str], Op] = {}
        pairs: list[tuple[Op, Op | None]] = []
        slot: dict[int, int] = {}
        for op in self.ops:
            if f is not None and op.f != f:
                continue
            key = (op.process, op.f)
            if op.type == "invoke":
                pending[key] = op
                slot[op.index] = len(pairs)
                pairs.append((op, None))
            else:
                inv = pending.pop(key, None)
                if inv is not None:
                    pairs[slot[inv.index]] = (inv, op)
        return pairs

    def db_snapshot(self, label: str) -> DbSnapshot | None:
        for snap in self.db or ():
            if snap.label == label:
                return snap
        return None


def validate_pairing(ops: Iterable[Op]) -> list[str]:
    """Problems with invoke/complete pairing (empty when the history is well-formed)."""
    problems: list[str] = []
    open_: dict[tuple[int, str], Op] = {}
    last_index = -1
    for op in ops:
        if op.index <= last_index:
            problems.append(f"op {op.index}: index not increasing")
        last_index = op.index
        key = (op.process, op.f)
        if op.type == "invoke":
            if key in open_:
                problems.append(f"op {op.index}: process {op.process} invoked {op.f!r} twice")
            open_[key] = op
        elif key not in open_:
            problems.append(f"op {op.index}: {op.type} of {op.f!r} with no invoke")
        else:
            del open_[key]
    return problems


# -- JSON Lines --------------------------------------------------------------------------------

def op_record(trial: int, op: Op) -> dict[str, Any]:
    return {"kind": "op", "trial": trial, **asdict(op)}


def dump_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n"


class HistoryWriter:
    """Appends records as they happen; flushes every line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(dump_line(record))
        self._stream.flush()

    def header(self, run_meta: dict[str, Any]) -> None:
        self.write({"kind": "run", "schema": SCHEMA_VERSION, **run_meta})

    def trial_start(self, meta: dict[str, Any]) -> None:
        self.write({"kind": "trial", **meta})

    def op(self, trial: int, op: Op) -> None:
        self.write(op_record(trial, op))

    def provider(self, trial: int, calls: list[ProviderCall] | None) -> None:
        self.write({"kind": "provider", "trial": trial,
                    "calls": None if calls is None else [asdict(c) for c in calls]})

    def db(self, trial: int, snapshots: list[DbSnapshot] | None) -> None:
        self.write({"kind": "db", "trial": trial,
                    "snapshots": None if snapshots is None else [_snap_dict(s) for s in snapshots]})


def _snap_dict(snap: DbSnapshot) -> dict[str, Any]:
    return {"label": snap.label, "time_ns": snap.time_ns,
            "runs": [asdict(r) for r in snap.runs],
            "messages": [asdict(m) for m in snap.messages]}


def trial_records(trial: Trial) -> Iterator[dict[str, Any]]:
    number = int(trial.meta.get("trial", 0))
    yield {"kind": "trial", **trial.meta}
    for op in trial.ops:
        yield op_record(number, op)
    yield {"kind": "provider", "trial": number,
           "calls": None if trial.provider is None else [asdict(c) for c in trial.provider]}
    yield {"kind": "db", "trial": number,
           "snapshots": None if trial.db is None else [_snap_dict(s) for s in trial.db]}


def dumps_trials(trials: Iterable[Trial], run_meta: dict[str, Any] | None = None) -> str:
    lines = [dump_line({"kind": "run", "schema": SCHEMA_VERSION, **(run_meta or {})})]
    for trial in trials:
        lines.extend(dump_line(r) for r in trial_records(trial))
    return "".join(lines)


def loads_trials(text: str) -> tuple[dict[str, Any], list[Trial]]:
    """Parse a history file; a truncated last line (a crash mid-write) is ignored."""
    run_meta: dict[str, Any] = {}
    trials: dict[int, Trial] = {}
    lines = text.splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if lineno == len(lines):
                break  # a partial final line: the writer was interrupted
            raise HistoryError(f"line {lineno}: not valid JSON") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise HistoryError(f"line {lineno}: expected an object with 'kind'")
        kind = record.pop("kind")
        try:
            if kind == "run":
                schema = record.get("schema")
                if isinstance(schema, bool) or schema not in SCHEMA_VERSIONS:
                    raise HistoryError(f"line {lineno}: schema {schema!r} is not one of "
                                       f"{', '.join(map(str, SCHEMA_VERSIONS))}")
                run_meta = record
            elif kind == "trial":  # a later record for the same trial completes its meta
                number = int(record["trial"])
                if number in trials:
                    trials[number].meta.update(record)
                else:
                    trials[number] = Trial(meta=record)
            elif kind == "op":
                number = int(record.pop("trial"))
                op_type = record["type"]
                if op_type not in OP_TYPES:
                    raise HistoryError(f"line {lineno}: type {op_type!r} not one of {OP_TYPES}")
                _trial(trials, number, lineno).ops.append(Op(**record))
            elif kind == "provider":
                calls = record["calls"]
                _trial(trials, int(record["trial"]), lineno).provider = (
                    None if calls is None else [ProviderCall(**c) for c in calls])
            elif kind == "db":
                snaps = record["snapshots"]
                _trial(trials, int(record["trial"]), lineno).db = (
                    None if snaps is None else [
                        DbSnapshot(label=s["label"], time_ns=s["time_ns"],
                                   runs=tuple(RunRow(**r) for r in s["runs"]),
                                   messages=tuple(MessageRow(**m) for m in s["messages"]))
                        for s in snaps])
            else:
                raise HistoryError(f"line {lineno}: unknown kind {kind!r}")
        except (KeyError, TypeError) as exc:
            raise HistoryError(f"line {lineno}: bad {kind!r} record: {exc}") from None
    if run_meta.get("schema", 1) != 1:  # since version 2 a completed trial says so
        for trial in trials.values():
            if trial.meta.get("ended") is not True and not trial.meta.get("skipped"):
                trial.meta["interrupted"] = True
    return run_meta, [trials[k] for k in sorted(trials)]


def _trial(trials: dict[int, Trial], number: int, lineno: int) -> Trial:
    if number not in trials:
        raise HistoryError(f"line {lineno}: trial {number} has no 'trial' record before it")
    return trials[number]
