"""One race, end to end: set up a chat, fire N turns together, hold, observe, stop, release.

The engine records facts into the history (it never judges): every client action is an
``invoke`` and one completion. Every phase has a bound; nothing is retried, so no provider call
is ever made twice on the harness's account.

Phases of a single-chat trial
-----------------------------
1. *setup* — a first turn creates a fresh chat and is let to end (or ``--chat-id`` is reused).
2. *prepare* — N connections open and each request is written except its last body byte.
3. *release* — the final bytes go out in one tight loop; answers are read concurrently. The
   fake provider holds every racer's stream after one token, so the winner is certainly still
   active while the losers arrive.
4. *held* — while the winner is held: ``/runs`` and a database snapshot.
5. *stop* — ``/stop`` on the winner; its stream must end and the provider see the disconnect.
6. *drain* — every hold is released and every racer's response read to its end (bounded).
7. *after* — ``/runs`` and a database snapshot, then a *released* turn on the chat.
8. *cleanup* — any run still active on the chat is stopped, so nothing is left running.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from harness.fake_provider import FakeProvider
from harness.fire import Racer, release_last_bytes
from harness.history import HistoryWriter, Op, OpType, Trial
from harness.observe import DbObserver, ServiceClient
from harness.target import Target

log = logging.getLogger(__name__)

SYNC_MODES = ("last-byte", "naive")


@dataclass(frozen=True)
class RaceConfig:
    n: int = 50
    sync: str = "last-byte"
    chat_id: str | None = None
    settle_ms: float = 100.0
    answer_timeout_s: float = 10.0
    losers_fast_bound_ms: float = 1000.0
    stop_bound_ms: float = 2000.0
    drain_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0


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
    racers: list[Racer] = field(default_factory=list)

    def nonce(self, role: str) -> str:
        return f"{self.seed:x}-{self.trial_no}-{role}"

    def racer(self, text: str, chat_id: str | None) -> Racer:
        t = self.target
        return Racer(t.endpoint(), "POST", t.prefix + t.profile.paths.stream,
                     [("content-type", "application/json"), ("accept", "text/event-stream"),
                      *t.auth_headers()], turn_body(text, chat_id))


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


async def run_trial(ctx: TrialContext) -> Trial:
    cfg = ctx.config
    n = cfg.n
    rec = Recorder(ctx.trial_no, ctx.writer)
    meta: dict[str, Any] = {
        "trial": ctx.trial_no, "seed": ctx.seed, "n": n, "sync": cfg.sync,
        "losers_fast_bound_ms": cfg.losers_fast_bound_ms, "stop_bound_ms": cfg.stop_bound_ms,
        "provider_access": ctx.provider is not None, "db_access": ctx.db is not None,
    }
    P_SETUP, P_RELEASED, P_STOP, P_OBSERVE, P_CLEANUP = n, n + 1, n + 2, n + 3, n + 4
    provider = ctx.provider
    ledger_start = len(provider.calls) if provider is not None else 0
    race_nonces = {ctx.nonce(f"r{i}") for i in range(n)}
    if provider is not None:
        provider.reset()
        provider.mode_for = lambda nonce: "hold" if nonce in race_nonces else "finish"
    snapshots = []
    if ctx.writer is not None:
        ctx.writer.trial_start(meta)

    # 1. setup
    chat_id = cfg.chat_id
    if chat_id is None:
        setup = await whole_turn(ctx, rec, P_SETUP, "setup", None, cfg.answer_timeout_s)
        if setup.get("status") != 200 or not setup.get("chat_id"):
            raise TargetUnreachable(_setup_problem(setup))
        chat_id = setup["chat_id"]
    meta["chat_id"] = chat_id
    if ctx.db is not None:
        snapshots.append(await ctx.db.snapshot(chat_id, "before"))

    # 2. prepare
    racers = [ctx.racer(race_text(ctx.nonce(f"r{i}"), "racer"), chat_id) for i in range(n)]
    ctx.racers = racers
    failed: dict[int, str] = {}
    async with trio.open_nursery() as nursery:
        for i, racer in enumerate(racers):
            nursery.start_soon(_prepare, racer, i, cfg, failed)
    live = [r for i, r in enumerate(racers) if i not in failed]

    # 3. release, and read every answer concurrently
    async with trio.open_nursery() as readers:
        if cfg.sync == "last-byte":
            await trio.sleep(cfg.settle_ms / 1000)  # let the server take every prefix
            release_ns, _ = await release_last_bytes(live)
        else:
            release_ns = time.monotonic_ns()
            async with trio.open_nursery() as senders:
                for racer in live:
                    senders.start_soon(_send_naive, racer)
        for i, racer in enumerate(racers):
            nonce = ctx.nonce(f"r{i}")
            if i in failed:
                rec.add("invoke", "turn", i, nonce, {"role": "racer", "chat_id": chat_id},
                        time_ns=release_ns)
                rec.add("fail", "turn", i, nonce, {"error": failed[i]})
            else:
                rec.add("invoke", "turn", i, nonce, {"role": "racer", "chat_id": chat_id,
                                                     "sent_ns": racer.sent_ns},
                        time_ns=racer.sent_ns or release_ns)
                readers.start_soon(racer.read_response)
        sent = [r.sent_ns for r in live if r.sent_ns is not None]
        meta["release_ns"] = release_ns
        meta["send_spread_ns"] = (max(sent) - min(sent)) if sent else None

        with trio.move_on_after(cfg.answer_timeout_s):
            for racer in live:
                await racer.answered.wait()
        winner = _first_winner(racers)

        # 4. held: the winner's run as the service and the database report it
        if winner is not None:
            await _observe_runs(ctx, rec, P_OBSERVE, chat_id, "held")
            if ctx.db is not None:
                snapshots.append(await ctx.db.snapshot(chat_id, "held"))

            # 5. stop the winner
            run_id = winner.response.stream.run_id if winner.response.stream else None
            if run_id:
                await _stop(ctx, rec, P_STOP, run_id)
                with trio.move_on_after(cfg.stop_bound_ms / 1000):
                    await winner.finished.wait()
                if provider is not None:
                    winner_nonce = ctx.nonce(f"r{racers.index(winner)}")
                    with trio.move_on_after(cfg.stop_bound_ms / 1000):
                        await provider.wait_disconnected(winner_nonce)

        # 6. drain: let every other stream end, bounded
        if provider is not None:
            provider.mode_for = lambda nonce: "finish"
            provider.release_all()
        with trio.move_on_after(cfg.drain_timeout_s):
            for racer in live:
                await racer.finished.wait()
        for i, racer in enumerate(racers):
            if i in failed:
                continue
            value = {"sent_ns": racer.sent_ns, **racer.response.summary()}
            # An answer (a status line) is a known outcome; no answer at all is unknown.
            complete: OpType = "ok" if racer.response.status is not None else "info"
            rec.add(complete, "turn", i, ctx.nonce(f"r{i}"), value,
                    time_ns=racer.response.end_ns or racer.response.headers_ns)
        readers.cancel_scope.cancel()
    for racer in racers:
        await racer.aclose()

    # 7. after
    await _observe_runs(ctx, rec, P_OBSERVE, chat_id, "after")
    if ctx.db is not None:
        snapshots.append(await ctx.db.snapshot(chat_id, "after"))
    await whole_turn(ctx, rec, P_RELEASED, "released", chat_id, cfg.answer_timeout_s)

    # 8. cleanup: nothing the harness started is left active
    await _cleanup(ctx, rec, P_CLEANUP, chat_id)

    if ctx.writer is not None:
        ctx.writer.trial_start(meta)  # the completed meta: chat, release instant, spread
    trial = Trial(meta=meta, ops=rec.ops,
                  provider=provider.ledger(ledger_start) if provider is not None else None,
                  db=snapshots if ctx.db is not None else None)
    if ctx.writer is not None:
        ctx.writer.provider(ctx.trial_no, trial.provider)
        ctx.writer.db(ctx.trial_no, trial.db)
    return trial


async def _prepare(racer: Racer, i: int, cfg: RaceConfig, failed: dict[int, str]) -> None:
    try:
        with trio.fail_after(cfg.connect_timeout_s):
            await racer.connect()
            if cfg.sync == "last-byte":
                await racer.send_prefix()
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        failed[i] = f"{type(exc).__name__}: {exc}"


async def _send_naive(racer: Racer) -> None:
    try:
        await racer.send_whole()
    except (OSError, trio.BrokenResourceError) as exc:
        racer.response.error = f"send failed: {type(exc).__name__}"
        racer.answered.set()
        racer.finished.set()


def _first_winner(racers: list[Racer]) -> Racer | None:
    winners = [r for r in racers if r.response.status == 200 and r.response.headers_ns]
    tracked = [r for r in winners if r.response.stream and r.response.stream.run_id]
    pool = tracked or winners
    return min(pool, key=lambda r: r.response.headers_ns or 0) if pool else None


async def _observe_runs(ctx: TrialContext, rec: Recorder, process: int, chat_id: str,
                        phase: str) -> None:
    if not ctx.target.profile.paths.runs:
        return
    rec.add("invoke", "runs", process, None, {"chat_id": chat_id, "phase": phase})
    try:
        with trio.fail_after(ctx.config.answer_timeout_s):
            status, runs = await ctx.service.runs(chat_id)
    except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
        rec.add("info", "runs", process, None, {"phase": phase, "error": type(exc).__name__})
        return
    rec.add("ok", "runs", process, None, {"phase": phase, "status": status, "runs": runs})


async def _stop(ctx: TrialContext, rec: Recorder, process: int, run_id: str,
                role: str = "winner") -> bool | None:
    rec.add("invoke", "stop", process, None, {"run_id": run_id, "role": role})
    try:
        with trio.fail_after(ctx.config.answer_timeout_s):
            status, stopped = await ctx.service.stop(run_id=run_id)
    except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
        rec.add("info", "stop", process, None, {"error": type(exc).__name__})
        return None
    rec.add("ok", "stop", process, None, {"status": status, "stopped": stopped})
    return stopped


async def _cleanup(ctx: TrialContext, rec: Recorder, process: int, chat_id: str) -> None:
    if not ctx.target.profile.paths.runs:
        return
    try:
        status, runs = await ctx.service.runs(chat_id)
    except Exception:  # noqa: BLE001 - cleanup is best effort, logged
        log.warning("cleanup: could not list the runs of chat %s", chat_id)
        return
    for run in runs or []:
        if run.get("status") in ("pending", "running") and run.get("id"):
            await _stop(ctx, rec, process, str(run["id"]), role="cleanup")


def _setup_problem(setup: dict[str, Any]) -> str:
    status = setup.get("status")
    if status is None:
        return f"the set-up turn got no answer ({setup.get('error', 'no response')})"
    if status in (401, 403):
        return f"the set-up turn was refused with {status}: check --token"
    return f"the set-up turn answered {status}, not a 200 stream with a chatId"
