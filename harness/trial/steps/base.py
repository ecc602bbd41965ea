"""What every step implementation works on, and the registry they are found in.

A step is an async function ``(program, call) -> None`` registered with :func:`step` under the
name of its spec (``core/steps.py``); :meth:`Program.run` runs a scenario's steps through the
registry, in order, on one trial's :class:`TrialState`. A step records facts into the history
(never judging); every wait is bounded; nothing is retried. A step that needs something this run
does not have raises :class:`StepNotAvailable` (the scenario is then skipped, not failed).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from raceharness.adapters.base import AdapterError
from raceharness.core.history import DbSnapshot, OpType
from raceharness.core.protocol import ACTIVE_STATUSES
from raceharness.core.scenario import Scenario, Step
from raceharness.core.steps import SPECS
from raceharness.net.http2 import H2Burst
from raceharness.net.race_request import RaceRequest
from raceharness.trial.context import Recorder, TrialContext

# The history's process ids of what is not a racer (a racer's is its index).
P_HOLDER, P_SETUP, P_RELEASED, P_STOP, P_OBSERVE, P_CLEANUP, P_PROBE = (
    10_000, 10_001, 10_002, 10_003, 10_004, 10_005, 10_100)
P_DATABASE = 10_006
ACTIVE = ACTIVE_STATUSES

log = logging.getLogger("raceharness.trial.program")  # one logger for the steps, as before

StepFn = Callable[["Program", Step], Awaitable[None]]
IMPLEMENTATIONS: dict[str, StepFn] = {}


def step(name: str) -> Callable[[StepFn], StepFn]:
    """Register the decorated function as the implementation of step ``name``."""
    def register(fn: StepFn) -> StepFn:
        if name not in SPECS:
            raise LookupError(f"{fn.__module__}.{fn.__qualname__}: no step spec {name!r} in "
                              "core/steps.py")
        if name in IMPLEMENTATIONS:
            other = IMPLEMENTATIONS[name]
            raise LookupError(f"step {name!r} implemented twice: {other.__module__}."
                              f"{other.__qualname__} and {fn.__module__}.{fn.__qualname__}")
        IMPLEMENTATIONS[name] = fn
        return fn
    return register


class StepNotAvailable(Exception):
    """The step needs something this run does not have (the message says what)."""


@dataclass
class TrialState:
    readers: trio.Nursery
    chat_id: str | None = None
    chats: list[str] = field(default_factory=list)
    racers: list[RaceRequest] = field(default_factory=list)  # HTTP/1.1 racers or HTTP/2 streams
    nonces: list[str] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    recorded: set[int] = field(default_factory=set)
    winner: int | None = None
    holder: RaceRequest | None = None
    previous_run_id: str | None = None
    holder_recorded: bool = False
    snapshots: list[DbSnapshot] = field(default_factory=list)
    h2: list[H2Burst] = field(default_factory=list)  # the burst's HTTP/2 connections
    database_down: bool = False  # the service's database was taken away and not yet given back

    def winner_run_id(self) -> str | None:
        if self.winner is None:
            return None
        return stream_attr(self.racers[self.winner], "run_id")


class Program:
    """A scenario's steps on one trial's state, and the helpers several steps share."""

    def __init__(self, ctx: TrialContext, scenario: Scenario, rec: Recorder,
                 meta: dict[str, Any], state: TrialState, shared: dict[str, Any]) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.rec = rec
        self.meta = meta
        self.state = state
        self.shared = shared  # survives across trials (reuse_chat)
        self.decided: str | None = None  # why the trial's verdict can no longer change

    async def run(self) -> None:
        for k, call in enumerate(self.scenario.steps):
            if self.decided is not None:
                # The trial's verdict is settled (a property is certainly invalid): the steps
                # left would only wait out the bounds of a broken service. The drain and the
                # cleanup still run; properties that needed the skipped steps say unknown.
                self.meta["cut_short"] = {"because": self.decided, "skipped": [
                    s.do for s in self.scenario.steps[k:]]}
                log.info("trial %s cut short after %s: %s", self.ctx.trial_no,
                         self.scenario.steps[k - 1].do, self.decided)
                return
            await self.perform(call)

    async def perform(self, call: Step) -> None:
        """Run one step through the registry."""
        await IMPLEMENTATIONS[call.do](self, call)

    @property
    def bound_s(self) -> float:
        return self.ctx.config.answer_timeout_s

    def provider_modes(self, modes: dict[str, str]) -> None:
        """The fake provider answers the calls of these nonces so (others as before)."""
        provider = self.ctx.provider
        if provider is not None:
            previous = provider.mode_for
            provider.mode_for = lambda nonce: modes.get(nonce or "", previous(nonce))

    async def stop_run(self, run_id: str, role: str, instance: int = 0,
                       chat_id: str | None = None) -> bool | None:
        """``/stop`` the run (bounded), recorded as a ``stop`` op with ``role``. ``chat_id``
        (default: the trial's chat) is for adapters whose stop route names the chat."""
        self.rec.add("invoke", "stop", P_STOP, None, {"run_id": run_id, "role": role})
        try:
            with trio.fail_after(self.bound_s):
                status, stopped = await self.ctx.services[instance].stop(
                    run_id=run_id, chat_id=chat_id or self.state.chat_id)
        except AdapterError:  # the target's wire is not what its adapter says: loudly
            raise
        except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
            self.rec.add("info", "stop", P_STOP, None, {"error": type(exc).__name__})
            return None
        self.rec.add("ok", "stop", P_STOP, None, {"status": status, "stopped": stopped})
        if stopped is not None:  # stopped, or already ended: not to be stopped again
            self.ctx.settled_runs.add(run_id)
        return stopped

    def record_racer(self, i: int) -> None:
        """Racer ``i``'s answer as a ``turn`` completion, once."""
        st = self.state
        if i in st.recorded or i in st.failed:
            return
        racer = st.racers[i]
        value = {"sent_ns": racer.sent_ns, **racer.response.summary()}
        # An answer (a status line) is a known outcome; no answer at all is unknown.
        kind: OpType = "ok" if racer.response.status is not None else "info"
        self.rec.add(kind, "turn", i, st.nonces[i], value,
                     time_ns=racer.response.end_ns or racer.response.headers_ns)
        st.recorded.add(i)


def stream_attr(racer: RaceRequest, name: str) -> str | None:
    """``run_id`` or ``chat_id`` from the racer's start frame, if it had one (the chat id
    the turn was sent on when its stream names none: a chat id in the path)."""
    stream = racer.response.stream
    value = None if stream is None else getattr(stream, name)
    if value is None and name == "chat_id" and stream is not None:
        return racer.chat_id
    return value


def winners(racers: Sequence[RaceRequest]) -> list[int]:
    """The racers answered 200 (with headers seen), in racer order."""
    return [i for i, r in enumerate(racers) if r.response.status == 200 and r.response.headers_ns]

