"""The step vocabulary of scenario files, declared once (pure data).

Each :class:`StepSpec` says what a ``[[steps]]`` table may hold: the step's name, its arguments
(type, allowed values, default), the capabilities it needs of the system under test, the
observation phases it records, and a one-line summary. The scenario loader validates every
step against it (``scenario.py``), the trial layer registers exactly one implementation per
spec (``trial/steps/``, checked by a test), and the step reference for the command line and the
docs is derived from it (:func:`reference`).

:class:`Phase` is the label of an observation: the ``phase`` of a ``runs``/``run`` op and the
label of a database snapshot. The checkers select the evidence they judge by it, so its values
are the on-disk strings of the history and must not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """When an observation of a chat was made (its ``phase``; a snapshot's ``label``)."""

    BEFORE = "before"                  # observe: before the burst
    HELD = "held"                      # observe: while the winner holds the chat
    AFTER = "after"                    # observe: after the stop and the drain
    AFTER_STOP = "after-stop"          # stop-winner: until the stopped run is listed ended
    BEFORE_STALE = "before-stale"      # stale-stop: before the stale /stop
    AFTER_STALE = "after-stale"        # stale-stop: after it
    BEFORE_FOREIGN = "before-foreign"  # foreign-user: before another user's probes
    AFTER_FOREIGN = "after-foreign"    # foreign-user: after them
    FINAL = "final"                    # wait-run-end: the winner's run, ended
    STORM = "storm"                    # disconnect-storm: each storm chat's last run
    RECLAIMED = "reclaimed"            # expire-lease: the dead owner's run, reclaimed
    RECOVERED = "recovered"            # database-up: the chat once the service answers again
    CLEANUP = "cleanup"                # every trial's end: each chat's runs, then stopped


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


@dataclass(frozen=True)
class Arg:
    """One argument of a step. Every argument is optional: absent, the engine uses ``default``
    or, when ``derived`` is set, a value it derives (``derived`` says from what)."""

    name: str
    type: type                         # str, int (>= 0) or list (non-empty, integers >= 0)
    summary: str
    default: Any = None
    derived: str = ""
    choices: tuple[str, ...] = ()      # the values a string argument may take
    only_with: tuple[str, str] | None = None  # (argument, value) this one needs

    def describe_default(self) -> str:
        if self.derived:
            return self.derived
        if isinstance(self.default, tuple):
            return "[" + ", ".join(map(str, self.default)) + "]" if self.default else "none"
        return str(self.default)


@dataclass(frozen=True)
class StepSpec:
    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    requires: frozenset[str] = frozenset()  # capabilities (scenario.CAPABILITIES)
    records: tuple[Phase, ...] = ()         # the phases of the observations it records

    def arg(self, name: str) -> Arg:
        for arg in self.args:
            if arg.name == name:
                return arg
        raise KeyError(f"step {self.name!r} takes no argument {name!r}")

    def default(self, name: str) -> Any:
        """The argument's fixed default; a derived one is the engine's to supply."""
        arg = self.arg(name)
        if arg.derived:
            raise LookupError(f"step {self.name!r}: {name!r} has no fixed default "
                              f"({arg.derived}): the engine supplies it")
        return arg.default

    @property
    def signature(self) -> dict[str, type]:
        return {arg.name: arg.type for arg in self.args}


def _arg(name: str, type_: type, summary: str, default: Any = None, *, derived: str = "",
         choices: tuple[str, ...] = (), only_with: tuple[str, str] | None = None) -> Arg:
    return Arg(name, type_, summary, default, derived, choices, only_with)


_N_BURST = _arg("n", int, "turns at once", derived="the scenario's n (--n)")
_PROVIDER_MODES = ("hold", "trickle", "slow-first", "error-mid", "finish", "status-500", "drop",
                   "stall")

_SPECS: tuple[StepSpec, ...] = (
    StepSpec("new-chat", "a first turn creates a fresh chat and is let to end (or --chat-id; "
             "reuse_chat keeps one across trials)"),
    StepSpec("new-chats", "N first turns at once, one fresh chat each",
             (_arg("n", int, "chats", derived="the scenario's n (--n)"),)),
    StepSpec("fresh-chat-id", "a chat id nobody made yet: the burst's turns race to create "
             "the chat (create-on-first-turn)", requires=frozenset({"client-chat-ids"})),
    StepSpec("count-chats", "how many chat records the target holds under the chat's id"),
    StepSpec("hold-turn", "a turn the provider holds after one token (the chat's holder)"),
    StepSpec("burst", "N turns released together; the first answered 200 is the winner", (
        _arg("n", int, "racers", derived="the scenario's n (--n)"),
        _arg("sync", str, "how the requests are released", derived="--sync",
             choices=("last-byte", "naive")),
        _arg("chats", str, "one chat for all, or the chats of new-chats", "same",
             choices=("same", "distinct")),
        _arg("per-chat", int, "racers on each distinct chat", 1),
        _arg("provider", str, "how the fake provider answers the racers' calls", "hold",
             choices=_PROVIDER_MODES),
        _arg("release", str, "when the racers go", "together",
             choices=("together", "after-first-start", "when-holder-stopped")),
        _arg("delays_ms", list, "each later turn this long after the first one's answer", (),
             only_with=("release", "after-first-start")),
    )),
    StepSpec("observe", "one /runs answer and a database snapshot of the chat, labelled",
             (_arg("phase", str, "the label the checkers select it by", Phase.HELD.value,
                   choices=PHASES),)),
    StepSpec("stop-winner", "/stop the winner's run (and any extra winner); its stream must "
             "end, its provider call close, and the service list it ended",
             (_arg("via", str, "the instance the stop is sent to", "owner",
                   choices=("owner", "other-instance")),),
             records=(Phase.AFTER_STOP,)),
    StepSpec("disconnect-winner", "the winner's client goes away mid-stream"),
    StepSpec("release-provider", "the fake provider lets every held call finish"),
    StepSpec("drain", "release the provider, read every response to its end (bounded)"),
    StepSpec("wait-run-end", "until the winner's run has ended (bounded); record it with its "
             "message", (
                 _arg("expect", str, "how the run must end", "succeeded",
                      choices=("succeeded", "failed", "aborted")),
                 _arg("within_s", int, "the bound",
                      derived="1.5 x the service's provider timeout + 5 s, else the answer "
                              "bound"),
             ), records=(Phase.FINAL,)),
    StepSpec("released-turn", "one whole turn on the chat once it is free"),
    StepSpec("disconnect-storm", "N turns on N chats whose clients drop at seeded random "
             "points; then every run must end",
             (_arg("n", int, "clients", derived="the number of chats from new-chats"),),
             requires=frozenset({"provider"}), records=(Phase.STORM,)),
    StepSpec("stale-stop", "/stop aimed at the chat's previous (ended) run while a newer one "
             "is live", records=(Phase.BEFORE_STALE, Phase.AFTER_STALE)),
    StepSpec("foreign-user", "another user's token on the chat: turn, stop, run, runs (each "
             "must be 403)", requires=frozenset({"other-token"}),
             records=(Phase.BEFORE_FOREIGN, Phase.AFTER_FOREIGN)),
    StepSpec("bad-inputs", "malformed, oversize and unauthenticated turns (each its 4xx)"),
    StepSpec("kill-owner", "SIGKILL the instance streaming the winner's run",
             requires=frozenset({"service-control"})),
    StepSpec("restart-service", "start the killed instance again; a turn within the lease "
             "must still get 409", requires=frozenset({"service-control"})),
    StepSpec("expire-lease", "until the dead owner's run is reclaimed (bounded by three "
             "leases)", records=(Phase.RECLAIMED,)),
    StepSpec("database-outage", "the scenario's N turns while run inserts fail in the "
             "database: each 503, no stream, no provider call",
             requires=frozenset({"db-control"})),
    StepSpec("database-down", "the service's database goes away (backends terminated, "
             "connections refused) until database-up", requires=frozenset({"db-control"})),
    StepSpec("burst-into-outage", "N turns held inside the gate, then the database taken away "
             "under them; it stays down", (_N_BURST,), requires=frozenset({"db-control"})),
    StepSpec("burst-during-outage", "N turns while the database is down: each a prompt, clean "
             "refusal", (_N_BURST,), requires=frozenset({"db-control"})),
    StepSpec("database-up", "give the database back; observe the chat until the service "
             "answers and no run of it is active",
             (_arg("within_s", int, "the bound", 30),),
             requires=frozenset({"db-control"}), records=(Phase.RECOVERED,)),
    StepSpec("postgres-restart", "restart the Postgres cluster the embedded stack started "
             "(fast: pg_ctl restart -m fast; immediate, or anything to do while it is down: "
             "pg_ctl stop -m MODE, then pg_ctl start); the database is back when it ends", (
                 _arg("mode", str, "the shutdown: fast (backends terminated, a checkpoint) or "
                      "immediate (every process killed: crash recovery at the start)", "fast",
                      choices=("fast", "immediate")),
                 _arg("at", str, "now, or gate: N turns held inside the gate first (each "
                      "must get 503)", "now", choices=("now", "gate")),
                 _arg("while_down", str, "what happens while the server is stopped: "
                      "nothing, N turns (each must get 503), or drain (the streams end and "
                      "their terminal writes meet it stopped)", "nothing",
                      choices=("nothing", "turns", "drain")),
                 _arg("n", int, "turns in the gate, and turns while it is down",
                      derived="the scenario's n (--n)"),
             ), requires=frozenset({"db-control"})),
    StepSpec("wait-recovered", "observe the chat until the service answers and no run of it "
             "is active (bounded); recorded as the recovered observation",
             (_arg("within_s", int, "the bound", 30),), records=(Phase.RECOVERED,)),
    StepSpec("hold-past", "keep the winner held past several heartbeats and one lease (needs "
             "the service's heartbeat and lease)",
             (_arg("intervals", int, "heartbeats held (at least the lease + 2 heartbeats)", 3),)),
    StepSpec("late-turns", "while the winner is held: single turns at phases of the heartbeat, "
             "one to each instance, then a burst; each must get 409", (
                 _arg("n", int, "turns in the closing burst", derived="the scenario's n (--n)"),
                 _arg("singles", int, "heartbeat phases with one turn to each instance", 3),
             )),
)

SPECS: dict[str, StepSpec] = {spec.name: spec for spec in _SPECS}


def reference() -> str:
    """The step vocabulary as text: one paragraph per step (``harness scenarios``, docs)."""
    lines: list[str] = []
    for spec in SPECS.values():
        needs = f"  [needs {', '.join(sorted(spec.requires))}]" if spec.requires else ""
        lines.append(f"{spec.name}: {spec.summary}{needs}")
        for arg in spec.args:
            choices = f" ({' | '.join(arg.choices)})" if arg.choices else ""
            only = (f"; only with {arg.only_with[0]} = {arg.only_with[1]}"
                    if arg.only_with else "")
            lines.append(f"    {arg.name}{choices}: {arg.summary}; default "
                         f"{arg.describe_default()}{only}")
        if spec.records:
            word = "phase" if len(spec.records) == 1 else "phases"
            lines.append(f"    records {word} {', '.join(p.value for p in spec.records)}")
    return "\n".join(lines)
