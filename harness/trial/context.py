"""The race engine's shared pieces: a trial's context, the op recorder, and whole turns.

The engine records facts into the history (it never judges): every client action is an
``invoke`` and one completion. Every phase has a bound; nothing is retried, so no provider call
is ever made twice on the harness's account. What a trial does is its scenario's steps
(``program.py``); ``harness race`` is the ``same-chat-burst`` scenario:

1. *new-chat* — a first turn creates a fresh chat and is let to end (or ``--chat-id``).
2. *burst* — N connections each write their request except its last body byte; the final bytes
   go out in one tight loop; answers are read concurrently. The fake provider holds every
   racer's stream after one token, so the winner is certainly still active as losers arrive.
3. *observe held* — ``/runs`` and a database snapshot while the winner is held.
4. *stop-winner* — ``/stop``; its stream must end and the provider see the disconnect.
5. *drain* — every hold released, every racer's response read to its end (bounded).
6. *observe after*, then a *released* turn on the chat.
7. *cleanup* — any run still active on the chat is stopped, so nothing is left running.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from raceharness.adapters.base import TERMINAL_FOR_STATUS
from raceharness.core.history import HistoryWriter, Op, OpType
from raceharness.core.protocol import default_losers_fast_bound_ms
from raceharness.net.http1 import Racer
from raceharness.net.race_request import RaceRequest
from raceharness.net.target import Target
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import DbObserver, ServiceClient

log = logging.getLogger(__name__)

SYNC_MODES = ("last-byte", "naive", "h2-single-packet")


@dataclass(frozen=True)
class RaceConfig:
    n: int = 50
    sync: str = "last-byte"
    chat_id: str | None = None
    settle_ms: float = 100.0
    answer_timeout_s: float = 10.0
    losers_fast_bound_ms: float | None = None  # None: default_losers_fast_bound_ms(n)
    stop_bound_ms: float = 2000.0
    drain_timeout_s: float = 10.0
    provider_call_bound_s: float = 3.0  # start frame -> the winner's provider call
    connect_timeout_s: float = 10.0


def losers_fast_bound_ms(config: RaceConfig) -> float:
    bound = config.losers_fast_bound_ms
    return default_losers_fast_bound_ms(config.n) if bound is None else bound


class TargetUnreachable(Exception):
    """The target did not answer the set-up (exit code 4); the message says what failed."""


class Recorder:
    """Appends ops with increasing indices, writing each line as it happens."""

    def __init__(self, trial_no: int, writer: HistoryWriter | None) -> None:
        self.trial_no = trial_no
        self.writer = writer
        self.ops: list[Op] = []

    def add(self, type_: OpType, f: str, process: int, nonce: str | None,
            value: dict[str, Any], time_ns: int | None = None) -> Op:
        op = Op(index=len(self.ops), type=type_, f=f, process=process,
                time_ns=time.monotonic_ns() if time_ns is None else time_ns, nonce=nonce,
                value=value)
        self.ops.append(op)
        if self.writer is not None:
            self.writer.op(self.trial_no, op)
        return op


def race_text(nonce: str, role: str) -> str:
    return f"[race:{nonce}] {role} turn of a raceharness trial. Say hello."


def turn_body(text: str, chat_id: str | None) -> bytes:
    body: dict[str, Any] = {"messages": [
        {"id": "msg-1", "role": "user", "parts": [{"type": "text", "text": text}]}]}
    if chat_id is not None:
        body["chatId"] = chat_id
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class TrialContext:
    target: Target
    config: RaceConfig
    provider: FakeProvider | None
    db: DbObserver | None
    service: ServiceClient
    trial_no: int
    seed: int
    writer: HistoryWriter | None = None
    racers: list[RaceRequest] = field(default_factory=list)  # the trial's, once it ended
    targets: list[Target] = field(default_factory=list)    # several instances (multi-instance)
    services: list[ServiceClient] = field(default_factory=list)
    control: Any = None  # the embedded service (kill, restart, database failures) or None
    # The service settings the scenario assumes (scenario.SERVICE_SETTINGS), with the values
    # in force: the scenario's own on the embedded stack, the declared ones on a target.
    settings: dict[str, float] = field(default_factory=dict)
    # Runs this trial needs stop no more: a /stop it sent was answered, or its cleanup saw
    # them listed as no longer active. The last pass (program.stop_leftovers) leaves them be.
    settled_runs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.targets = self.targets or [self.target]
        self.services = self.services or [self.service]

    def nonce(self, role: str) -> str:
        return f"{self.seed:x}-{self.trial_no}-{role}"

    def turn_request(self, text: str, chat_id: str | None, instance: int = 0
                     ) -> tuple[str, str, list[tuple[str, str]], bytes]:
        """(method, path, headers, body) of a turn to instance ``instance``."""
        return turn_request(self.targets[instance], text, chat_id)

    def racer(self, text: str, chat_id: str | None, instance: int = 0) -> Racer:
        racer = Racer(self.targets[instance].endpoint(),
                      *self.turn_request(text, chat_id, instance))
        racer.chat_id = chat_id
        return racer


def turn_request(target: Target, text: str, chat_id: str | None
                 ) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """(method, path, headers, body) of a turn on ``target``, as its adapter shapes it."""
    method, path, extra, body = target.profile.adapter.turn_request(text, chat_id)
    return (method, target.prefix + path,
            [("content-type", "application/json"), *extra, *target.auth_headers()], body)


async def settle_terminal(service: ServiceClient, racer: RaceRequest,
                          bound_s: float = 5.0) -> None:
    """For a target whose streams end without a terminal frame (its adapter's ``stream_end``
    is ``status``): once a 200 stream ended, the terminal its run's status stands for (read
    from the target, bounded; left None while the run is still active or cannot be read)."""
    stream = racer.response.stream
    chat_id = racer.chat_id or (stream.chat_id if stream else None)
    if (service.adapter.stream_end != "status" or stream is None or stream.terminal
            or not stream.run_id or not chat_id or racer.response.end_ns is None):
        return
    with trio.move_on_after(bound_s):
        while True:
            try:
                status = await service.run_status(chat_id, stream.run_id)
            except httpx.HTTPError:
                status = None
            terminal = TERMINAL_FOR_STATUS.get(status or "")
            if terminal is not None:
                stream.terminal = terminal
                return
            await trio.sleep(0.05)  # polling the target's record, bounded by bound_s


async def whole_turn(ctx: TrialContext, rec: Recorder, process: int, role: str,
                     chat_id: str | None, timeout_s: float) -> dict[str, Any]:
    """A turn read to its end (setup / released), recorded as invoke + completion."""
    nonce = ctx.nonce(role)
    racer = ctx.racer(race_text(nonce, role), chat_id)
    rec.add("invoke", "turn", process, nonce, {"role": role, "chat_id": chat_id})
    try:
        with trio.fail_after(timeout_s):
            await racer.connect()
            sent_ns = await racer.send_whole()
            await racer.read_response()
            await settle_terminal(ctx.service, racer)
    except (OSError, trio.TooSlowError) as exc:
        reached = racer.sent_ns is not None
        value = {"error": f"{type(exc).__name__}: {exc}", **racer.response.summary()}
        rec.add("info" if reached else "fail", "turn", process, nonce, value)
        await racer.aclose()
        return {"status": None, **value}
    await racer.aclose()
    value = {"sent_ns": sent_ns, **racer.response.summary()}
    rec.add("ok", "turn", process, nonce, value)
    return value
