"""``harness soak``: minutes of mixed load against the embedded reference, then the totals.

The embedded stack (Postgres, ``--instances`` reference processes on one database, the fake
provider in the harness) takes ``--concurrency`` closed-loop workers for ``--duration`` seconds.
Each worker picks its next action with a seeded RNG (its first action is fixed, so even a short
soak covers every kind):

- ``burst`` — 5..20 turns on one idle chat, released together (last byte or whole request); the
  provider holds the winner, which then ends by a release, a ``/stop`` or a client disconnect;
- ``distinct`` — 2..6 turns on new chats at once;
- ``stop`` — a held turn stopped through ``/stop`` on a random instance;
- ``disconnect`` — a held turn whose client goes away after the start frame or the first token
  (its hold is never released: ending that run is the service's job);
- ``provider-error`` — a turn whose provider call fails (``error-mid``, ``status-500``,
  ``drop``) or is slow to its first token (``slow-first``);
- ``turn`` — one plain turn on an idle or a new chat.

Half-way through, one instance is killed with SIGKILL while it streams a held run (a crash: its
runs are left to the lease reaper) and started again. Every request is bounded; nothing is
retried. At the end every hold is released and the harness waits (a bounded poll of the
database, three leases at most) until no run is ``pending``/``running``; then it counts, from
the **database** (``ai_chat_runs``) and the fake provider's ledger.

``soak.json`` keys (schema ``soak-v1``; numbers are counts unless named otherwise):

- ``ok`` — both must-be-zero numbers are zero, no burst had more than one winner, nothing
  crashed, not interrupted;
  ``interrupted`` (bool) and ``interrupt_signal``; ``crashes`` (harness errors, instances that
  died by themselves, a failed restart);
- ``must_be_zero`` — ``active_runs_left`` (runs still pending/running after the settle bound)
  and ``untracked_provider_calls`` (provider calls whose ``[race:<nonce>]`` request got no run
  id from its start frame, or whose run id is not in ``ai_chat_runs``);
- ``config`` (duration, seed, instances, concurrency, lease, reproduce line), ``timing_s``
  (``load``, ``settle``, ``total``), ``settle`` (bound, active runs when the load ended);
- ``runs`` — ``started``, ``by_status``, ``ended``, ``reaped`` (aborted with error
  ``lease expired``), ``aborted_by_reason``, ``by_action`` (database status of each action's
  runs), ``unattributed`` (rows no request saw), ``stream_ids_missing`` (run ids a stream
  announced that have no row);
- ``requests`` — ``total``, ``by_outcome``, ``by_action`` (outcomes per action), ``conflicts``
  (409s), ``conflict_latency_ms`` (last byte sent → status line, p50/p99/max), ``bursts``
  (count, sizes, with conflicts, winners; ``more_than_one_winner`` and
  ``no_winner_unexplained`` are findings, ``hit_by_restart`` counts bursts whose winner may
  have died with the killed instance), ``stops``, ``malformed_streams``, ``per_minute``
  (requests, conflicts and runs started in each minute of load: a slowdown shows there);
- ``provider`` — ``calls``, ``by_mode``, ``untracked_calls``, ``untracked_examples``,
  ``repeat_calls`` (calls beyond the first for one request);
- ``restart`` — instance, when it was killed, the victim run, how long the restart took;
- ``service_metrics`` — the reference's own ``/metrics`` counters summed over instances (the
  killed incarnation is scraped just before the kill);
- ``resources`` — peak RSS of the harness (``getrusage``) and of each reference process
  (``VmHWM``, read before it stops); ``machine`` — cores, CPU model, memory, the load averages
  at the start and the end (the machine may be shared), Python.

Exit codes: 0 ok, 1 not ok (a must-be-zero number is non-zero, or something crashed), 2 usage,
4 environment unreachable, 130 interrupted. On SIGINT/SIGTERM no new action starts, the actions
in flight end (each is bounded), every run still active is stopped, and the partial totals are
written with ``"interrupted": true``; a second signal cuts the waiting short.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from raceharness.net.http1 import Racer
from raceharness.net.target import Target
from raceharness.runtime import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from raceharness.runtime import EXIT_INVALID as EXIT_NOT_OK
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import ServiceClient
from raceharness.stack.embedded import (
    EmbeddedService,
    EmbeddedStartError,
    embedded_postgres,
    reference_service,
)
from raceharness.stack.postgres import PostgresUnavailable
from raceharness.trial.context import race_text, turn_body

log = logging.getLogger(__name__)

SCHEMA = "soak-v1"

ACTIONS = ("burst", "provider-error", "stop", "disconnect", "distinct", "turn")
WEIGHTS = (30, 18, 12, 10, 15, 15)
ERROR_MODES = ("error-mid", "status-500", "drop", "slow-first")

# Bounds of one request's phases (seconds). Nothing waits without one; nothing is retried.
CONNECT_S = 10.0
ANSWER_S = 10.0      # last byte sent -> status line (and the start frame of a stream)
CALL_S = 5.0         # start frame -> the provider call it causes
DRAIN_S = 20.0       # -> the end of every stream of an action
STOP_S = 10.0
RESTART_S = 60.0
SCRAPE_S = 5.0
PROGRESS_S = 30.0

MIN_DURATION_S = 5.0
BURST_SIZES = (5, 20)
DISTINCT_SIZES = (2, 6)
NEW_CHAT_P = 0.3        # a single turn starts a new chat instead of reusing an idle one
POOL_MAX = 8            # idle chats a worker keeps
TURNS_PER_CHAT = 25     # a chat retires after this many turns (its history grows)
TOKEN_INTERVAL_S = 0.02
FIRST_TOKEN_DELAY_S = 0.5


# -- flags --------------------------------------------------------------------------------------

def _bounded(lo: float, hi: float, *, integer: bool = False) -> Callable[[str], float]:
    def parse(value: str) -> float:
        kind = "an integer" if integer else "a number"
        try:
            number: float = int(value) if integer else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}") from None
        if not math.isfinite(number) or not lo <= number <= hi:
            raise argparse.ArgumentTypeError(
                f"expected {kind} from {lo:g} to {hi:g}, got {value!r}")
        return number
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``harness soak``."""
    parser.add_argument("--duration", type=_bounded(MIN_DURATION_S, 86400), default=600.0,
                        metavar="SECONDS", help="seconds of load (default 600; at least 5)")
    parser.add_argument("--out", default="reports/soak", metavar="DIR",
                        help="write soak.json and soak.md here (default reports/soak)")
    parser.add_argument("--seed", type=_bounded(0, 2**63 - 1, integer=True),
                        help="seed of the workers' choices (default: random, printed)")
    parser.add_argument("--instances", type=_bounded(1, 8, integer=True), default=2,
                        help="reference instances on one database (default 2, so one can be "
                             "restarted while the other serves)")
    parser.add_argument("--concurrency", type=_bounded(1, 64, integer=True), default=4,
                        help="concurrent closed-loop workers (default 4)")
    parser.add_argument("--lease-s", type=_bounded(1.0, 60.0), default=3.0, metavar="SECONDS",
                        help="run lease of the reference (default 3: the restart's orphans "
                             "are reaped within the soak)")


# -- what one request saw ---------------------------------------------------------------------

@dataclass
class Req:
    nonce: str
    action: str
    instance: int
    chat_id: str | None
    mode: str
    called: trio.Event = field(default_factory=trio.Event)
    status: int | None = None
    run_id: str | None = None
    chat_out: str | None = None
    terminal: str | None = None
    done: bool = False
    error: str | None = None
    findings: int = 0
    sent_ns: int | None = None
    headers_ns: int | None = None
    disconnected: bool = False   # the harness closed it on purpose
    timed_out: bool = False
    minute: int = 0              # of the load, when it was sent

    def outcome(self) -> str:
        if self.disconnected:
            return "disconnected"
        if self.timed_out:
            return "timeout"
        if self.status is None:
            return "no-answer"
        if self.status == 200:
            return f"200-{self.terminal}" if self.terminal and self.done else "200-cut"
        return str(self.status)

    def clean(self) -> bool:
        """Its chat is idle again: a refusal, or a stream read to its end."""
        return self.outcome() in ("200-finish", "200-error", "200-abort", "409")


@dataclass
class Interrupt:
    signal: str | None = None
    scopes: list[trio.CancelScope] = field(default_factory=list)   # the first signal cancels
    hurry: list[trio.CancelScope] = field(default_factory=list)    # a second signal cancels


class Soak:
    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.duration_s = float(args.duration)
        self.instances = int(args.instances)
        self.concurrency = int(args.concurrency)
        self.lease_s = float(args.lease_s)
        self.seed = seed
        self.rng = random.Random(f"{seed}:main")
        self.provider = FakeProvider(token_interval_s=TOKEN_INTERVAL_S,
                                     first_token_delay_s=FIRST_TOKEN_DELAY_S)
        self.provider.mode_for = self._mode_for
        self.modes: dict[str, str] = {}
        self.reqs: dict[str, Req] = {}
        self.counter = 0
        self.settling = False
        self.down: set[int] = set()
        self.up = trio.Event()
        self.interrupt = Interrupt()
        self.crashes: list[str] = []
        self.crash_count = 0
        self.bursts: list[dict[str, Any]] = []
        self.stops: Counter[str] = Counter()
        self.restart: dict[str, Any] = {"done": False}
        self.rss: list[dict[str, Any]] = []
        self.metrics: Counter[str] = Counter()
        self.metrics_scrapes = 0
        self.metrics_failures = 0
        self.incarnation: list[int] = [0] * self.instances
        self.service: EmbeddedService | None = None
        self.targets: list[Target] = []
        self.clients: list[ServiceClient] = []
        self.old_clients: list[ServiceClient] = []
        self.postgres_source: str | None = None
        self.t0 = 0.0
        self.deadline = 0.0
        self.load_s = 0.0
        self.settle_s = 0.0
        self.active_at_load_end: int | None = None
        self.load_at_start: list[float] | None = None

    # -- the provider's view ------------------------------------------------------------------

    def _mode_for(self, nonce: str | None) -> str:
        req = self.reqs.get(nonce or "")
        if req is not None:
            req.called.set()
        if self.settling:
            return "finish"
        return self.modes.get(nonce or "", "finish")

    async def _wait_called(self, req: Req) -> None:
        with trio.move_on_after(CALL_S):
            await req.called.wait()

    # -- the whole run ------------------------------------------------------------------------

    async def main(self) -> dict[str, Any] | None:
        t_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._signals)
            await nursery.start(self.provider.serve, "127.0.0.1", 0)
            startup = trio.CancelScope()
            self.interrupt.scopes.append(startup)
            result: dict[str, Any] | None = None
            with startup:
                async with embedded_postgres() as cluster:
                    self.postgres_source = cluster.source
                    async with reference_service(cluster, self.provider.base_url,
                                                 lease_s=self.lease_s,
                                                 instances=self.instances) as service:
                        self.interrupt.scopes.remove(startup)
                        result = await self._soak(service, t_start)
            nursery.cancel_scope.cancel()
        return result

    async def _signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                first = self.interrupt.signal is None
                if first:
                    self.interrupt.signal = name
                    self.deadline = min(self.deadline, trio.current_time())
                    print(f"harness soak: {name}: no new actions; the ones in flight end (all "
                          "bounded), the runs are stopped and the partial totals written "
                          "(again to hurry)", file=sys.stderr, flush=True)
                for scope in [*self.interrupt.scopes, *([] if first else self.interrupt.hurry)]:
                    scope.cancel()

    async def _soak(self, service: EmbeddedService, t_start: float) -> dict[str, Any]:
        self.service = service
        self.targets = service.targets
        self.clients = [ServiceClient(t) for t in self.targets]
        try:
            self.t0 = trio.current_time()
            self.deadline = self.t0 + self.duration_s
            self.load_at_start = _load_average()
            print(f"harness soak: load started: {self.duration_s:g}s, {self.concurrency} "
                  f"workers, {self.instances} instance(s), lease {self.lease_s:g}s, seed "
                  f"{self.seed}", file=sys.stderr, flush=True)
            if self.interrupt.signal is not None:  # it came between the start-up and now
                self.deadline = self.t0
            load = trio.CancelScope()
            self.interrupt.hurry.append(load)
            with load:
                async with trio.open_nursery() as nursery:
                    for w in range(self.concurrency):
                        nursery.start_soon(self._worker, w)
                    nursery.start_soon(self._restart_once)
                    nursery.start_soon(self._progress)
            self.interrupt.hurry.remove(load)
            self.load_s = trio.current_time() - self.t0
            t_settle = trio.current_time()
            await self._settle(service)
            self.settle_s = trio.current_time() - t_settle
            self._check_instances(service)
            for k in range(self.instances):
                if k not in self.down:
                    await self._scrape(k)
            totals = await trio.to_thread.run_sync(_db_totals, service.dsn)
            return self._result(totals, time.monotonic() - t_start)
        finally:
            with trio.CancelScope(shield=True):
                for client in [*self.clients, *self.old_clients]:
                    await client.aclose()

    async def _settle(self, service: EmbeddedService) -> None:
        """Release every hold (and on an interrupt stop the runs), then wait — a bounded poll
        of the database — until no run is active, or three leases pass."""
        self.settling = True
        self.provider.release_all()
        self.active_at_load_end = await trio.to_thread.run_sync(_active_count, service.dsn)
        scope = trio.move_on_after(3 * self.lease_s + 5)
        self.interrupt.hurry.append(scope)
        with scope:
            if self.interrupt.signal is not None:
                await self._stop_active(service)
            while True:
                if not await trio.to_thread.run_sync(_active_count, service.dsn):
                    break
                await trio.sleep(0.2)  # bounded poll of another process's database
        self.interrupt.hurry.remove(scope)

    async def _stop_active(self, service: EmbeddedService) -> None:
        ids = await trio.to_thread.run_sync(_active_ids, service.dsn)
        live = [k for k in range(self.instances) if k not in self.down]
        for run_id in ids:
            if not live:
                return
            try:
                with trio.fail_after(STOP_S):
                    await self.clients[live[0]].stop(run_id=run_id)
            except Exception:  # noqa: BLE001 - best effort: the lease reclaims the rest
                log.warning("could not stop run %s after the interrupt", run_id)

    def _check_instances(self, service: EmbeddedService) -> None:
        for k, instance in enumerate(service.instances):
            code = instance.process.returncode
            if code is not None and k not in self.down:
                self._crash(f"reference instance {k} exited by itself with code {code}")

    def _crash(self, text: str) -> None:
        self.crash_count += 1
        if len(self.crashes) < 20:
            self.crashes.append(text)

    async def _progress(self) -> None:
        scope = trio.CancelScope()
        self.interrupt.scopes.append(scope)
        with scope:
            await self._progress_lines()
        self.interrupt.scopes.remove(scope)

    async def _progress_lines(self) -> None:
        while True:
            left = self.deadline - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(min(PROGRESS_S, left))
            outcomes = Counter(r.outcome() for r in self.reqs.values() if r.status is not None
                               or r.error or r.timed_out)
            print(f"harness soak: {trio.current_time() - self.t0:5.0f}s  "
                  f"{len(self.reqs)} requests, {outcomes.get('409', 0)} conflicts, "
                  f"{len(self.provider.calls)} provider calls", file=sys.stderr, flush=True)

    # -- workers ------------------------------------------------------------------------------

    async def _worker(self, w: int) -> None:
        rng = random.Random(f"{self.seed}:worker:{w}")
        pool: list[str] = []
        uses: Counter[str] = Counter()
        first = True
        while trio.current_time() < self.deadline:
            action = ACTIONS[w % len(ACTIONS)] if first else rng.choices(ACTIONS, WEIGHTS)[0]
            first = False
            try:
                await getattr(self, "_do_" + action.replace("-", "_"))(rng, pool, uses)
            except Exception as exc:  # noqa: BLE001 - our bug: count it, keep the load going
                log.exception("soak worker %d: %s failed", w, action)
                self._crash(f"worker {w} {action}: {type(exc).__name__}: {exc}")

    def _req(self, action: str, instance: int, chat_id: str | None, mode: str) -> Req:
        self.counter += 1
        nonce = f"soak-{self.seed:x}-{self.counter}"
        req = Req(nonce=nonce, action=action, instance=instance, chat_id=chat_id, mode=mode,
                  minute=int((trio.current_time() - self.t0) // 60))
        self.reqs[nonce] = req
        self.modes[nonce] = mode
        return req

    async def _instance(self, rng: random.Random) -> int:
        """A live instance (a load balancer's choice); waits while every instance is down."""
        k = rng.randrange(self.instances)
        while True:
            for j in range(self.instances):
                if (k + j) % self.instances not in self.down:
                    return (k + j) % self.instances
            await self.up.wait()

    def _take_chat(self, rng: random.Random, pool: list[str], new_p: float) -> str | None:
        if not pool or rng.random() < new_p:
            return None
        return pool.pop(rng.randrange(len(pool)))

    def _give_back(self, pool: list[str], uses: Counter[str], chat: str | None,
                   reqs: list[Req]) -> None:
        if chat is None or not all(r.clean() for r in reqs):
            return
        uses[chat] += sum(1 for r in reqs if r.status == 200)
        if uses[chat] >= TURNS_PER_CHAT:
            return
        pool.append(chat)
        if len(pool) > POOL_MAX:
            pool.pop(0)

    async def _single(self, rng: random.Random, pool: list[str], uses: Counter[str],
                      action: str, mode: str,
                      middle: Callable[[Req, Racer], Awaitable[None]] | None = None) -> Req:
        chat = self._take_chat(rng, pool, NEW_CHAT_P)
        req = self._req(action, await self._instance(rng), chat, mode)

        async def mid(live: list[tuple[Req, Racer]]) -> None:
            if live and middle is not None:
                await middle(*live[0])

        await self._group([req], "whole", mid)
        self._give_back(pool, uses, chat or req.chat_out, [req])
        return req

    async def _do_turn(self, rng: random.Random, pool: list[str], uses: Counter[str]) -> None:
        await self._single(rng, pool, uses, "turn", "finish")

    async def _do_provider_error(self, rng: random.Random, pool: list[str],
                                 uses: Counter[str]) -> None:
        await self._single(rng, pool, uses, "provider-error", rng.choice(ERROR_MODES))

    async def _do_stop(self, rng: random.Random, pool: list[str], uses: Counter[str]) -> None:
        async def stop(req: Req, racer: Racer) -> None:
            if req_run_id(racer) is None:
                return
            await self._wait_called(req)
            if not await self._stop(rng, req_run_id(racer)):
                self.provider.release(req.nonce)

        await self._single(rng, pool, uses, "stop", "hold", stop)

    async def _do_disconnect(self, rng: random.Random, pool: list[str],
                             uses: Counter[str]) -> None:
        point = rng.choice(("start", "token"))

        async def drop(req: Req, racer: Racer) -> None:
            if racer.response.status != 200:
                return
            if point == "token":
                await self._wait_called(req)
            await _disconnect(req, racer)

        await self._single(rng, pool, uses, "disconnect", "hold", drop)

    async def _do_distinct(self, rng: random.Random, pool: list[str],
                           uses: Counter[str]) -> None:
        reqs = [self._req("distinct", await self._instance(rng), None, "finish")
                for _ in range(rng.randint(*DISTINCT_SIZES))]
        await self._group(reqs, "whole")
        for req in reqs:
            self._give_back(pool, uses, req.chat_out, [req])

    async def _do_burst(self, rng: random.Random, pool: list[str], uses: Counter[str]) -> None:
        chat = self._take_chat(rng, pool, 0.0)
        if chat is None:
            setup = self._req("setup", await self._instance(rng), None, "finish")
            await self._group([setup], "whole")
            if not setup.clean() or setup.chat_out is None:
                return
            chat = setup.chat_out
        n = rng.randint(*BURST_SIZES)
        sync = rng.choice(("last-byte", "whole"))
        end = rng.choices(("release", "stop", "disconnect"), (6, 3, 1))[0]
        reqs = [self._req("burst", await self._instance(rng), chat, "hold") for _ in range(n)]
        info: dict[str, Any] = {"n": n, "sync": sync, "end": end,
                                "instances": {r.instance for r in reqs},
                                "from_s": trio.current_time() - self.t0}

        async def end_winners(live: list[tuple[Req, Racer]]) -> None:
            winners = [(req, r) for req, r in live if r.response.status == 200]
            info["winners"] = len(winners)
            for req, racer in winners:
                run_id = req_run_id(racer)
                if end == "release" or run_id is None:
                    self.provider.release(req.nonce)
                    continue
                await self._wait_called(req)
                if end == "stop":
                    if not await self._stop(rng, run_id):
                        self.provider.release(req.nonce)
                else:
                    await _disconnect(req, racer)

        await self._group(reqs, sync, end_winners)
        info["to_s"] = trio.current_time() - self.t0
        info["conflicts"] = sum(1 for r in reqs if r.status == 409)
        info["unanswered"] = sum(1 for r in reqs if r.status is None and not r.disconnected)
        self.bursts.append(info)
        self._give_back(pool, uses, chat, reqs)

    async def _stop(self, rng: random.Random, run_id: str | None) -> bool:
        k = await self._instance(rng)
        try:
            with trio.fail_after(STOP_S):
                status, stopped = await self.clients[k].stop(run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - the service's failure is a count, not a crash
            self.stops[f"error {type(exc).__name__}"] += 1
            return False
        self.stops[f"{status} stopped={str(stopped).lower()}"] += 1
        return stopped is True

    # -- one action's requests ----------------------------------------------------------------

    async def _group(self, reqs: list[Req], sync: str,
                     middle: Callable[[list[tuple[Req, Racer]]], Awaitable[None]] | None = None,
                     ) -> None:
        """Open every request's connection, send them together, read the answers, run
        ``middle`` once every status is known, and read every stream to its end (bounded)."""
        racers: list[Racer | None] = [None] * len(reqs)

        async def open_one(i: int) -> None:
            racers[i] = await self._open(reqs[i], withhold=sync == "last-byte")

        async with trio.open_nursery() as nursery:
            for i in range(len(reqs)):
                nursery.start_soon(open_one, i)
        live = [(req, r) for req, r in zip(reqs, racers, strict=True) if r is not None]
        try:
            async with trio.open_nursery() as readers:
                for _, racer in live:
                    readers.start_soon(racer.read_response)
                if sync == "last-byte":
                    for _, racer in live:  # one tight loop, no checkpoint between sends
                        try:
                            racer.send_last_byte_nowait()
                        except OSError as exc:
                            _send_failed(racer, exc)
                else:
                    async with trio.open_nursery() as senders:
                        for _, racer in live:
                            senders.start_soon(_send_whole, racer)
                with trio.move_on_after(ANSWER_S):
                    for _, racer in live:
                        await racer.answered.wait()
                if middle is not None:
                    await middle(live)
                with trio.move_on_after(DRAIN_S):
                    for _, racer in live:
                        await racer.finished.wait()
                for req, racer in live:
                    req.timed_out = not racer.finished.is_set() and not req.disconnected
                readers.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for req in reqs:
                    # No hold outlives its action, except a disconnected client's: ending
                    # that run is the service's job (a release would let it finish instead).
                    if not req.disconnected:
                        self.provider.release(req.nonce)
                for req, racer in live:
                    await racer.aclose()
                    _record(req, racer)

    async def _open(self, req: Req, withhold: bool) -> Racer | None:
        target = self.targets[req.instance]
        racer = Racer(target.endpoint(), "POST", target.prefix + target.profile.paths.stream,
                      [("content-type", "application/json"),
                       ("accept", "text/event-stream"), *target.auth_headers()],
                      turn_body(race_text(req.nonce, "soak"), req.chat_id))
        try:
            with trio.fail_after(CONNECT_S):
                await racer.connect()
                if withhold:
                    await racer.send_prefix()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            req.error = f"connect: {type(exc).__name__}"
            await racer.aclose()
            return None
        return racer

    # -- the restart --------------------------------------------------------------------------

    async def _restart_once(self) -> None:
        """Half-way: SIGKILL one instance while it streams a held run, then start it again."""
        assert self.service is not None
        waiting = trio.CancelScope()  # an interrupt before the restart began skips it
        self.interrupt.scopes.append(waiting)
        with waiting:
            await trio.sleep_until(self.t0 + self.duration_s / 2)  # a schedule, not a sync
        self.interrupt.scopes.remove(waiting)
        if waiting.cancelled_caught or self.interrupt.signal is not None:
            return
        service = self.service
        k = self.rng.randrange(self.instances)
        info = self.restart
        info.update(instance=k)
        victim = self._req("restart-victim", k, None, "hold")

        async def kill(live: list[tuple[Req, Racer]]) -> None:
            if live and live[0][1].response.status == 200:
                await self._wait_called(victim)
            await self._scrape(k)
            self.down.add(k)
            info["killed_at_s"] = round(trio.current_time() - self.t0, 3)
            await service.kill(k)

        await self._group([victim], "whole", kill)
        info["victim_run_id"] = victim.run_id
        info["victim_outcome"] = victim.outcome()
        t = trio.current_time()
        try:
            with trio.fail_after(RESTART_S):
                await service.restart(k)
        except (EmbeddedStartError, trio.TooSlowError) as exc:
            self._crash(f"restart of instance {k} failed: {type(exc).__name__}: "
                        f"{str(exc)[-2000:]}")  # with the log's tail: the why
            return
        self.incarnation[k] += 1
        self.old_clients.append(self.clients[k])
        self.clients[k] = ServiceClient(self.targets[k])
        self.down.discard(k)
        self.up.set()
        self.up = trio.Event()
        info.update(done=True, restart_s=round(trio.current_time() - t, 3))

    async def _scrape(self, k: int) -> None:
        """Peak RSS and the service's own counters of instance ``k`` (before it stops)."""
        assert self.service is not None
        instance = self.service.instances[k]
        self.rss.append({"instance": k, "incarnation": self.incarnation[k],
                         "vm_hwm_kib": _vm_hwm_kib(instance.process.pid)})
        try:
            async with httpx.AsyncClient(timeout=SCRAPE_S) as client:
                with trio.fail_after(SCRAPE_S):
                    resp = await client.get(instance.url + "/metrics")
            resp.raise_for_status()
        except (httpx.HTTPError, trio.TooSlowError):
            self.metrics_failures += 1
            return
        self.metrics_scrapes += 1
        self.metrics.update(_parse_metrics(resp.text))

    # -- the totals ---------------------------------------------------------------------------

    def _result(self, db: dict[str, Any], total_s: float) -> dict[str, Any]:
        reqs = list(self.reqs.values())
        all_runs: dict[str, str] = db["runs"]
        nonce_run = {r.nonce: r.run_id for r in reqs}
        ledger = self.provider.ledger()
        untracked = [c for c in ledger if c.nonce is None or not nonce_run.get(c.nonce)
                     or nonce_run[c.nonce] not in all_runs]
        per_nonce = Counter(c.nonce for c in ledger if c.nonce is not None)
        stream_ids = {r.run_id for r in reqs if r.run_id}
        by_action: dict[str, Counter[str]] = {}
        for r in reqs:
            by_action.setdefault(r.action, Counter())[r.outcome()] += 1
        runs_by_action: dict[str, Counter[str]] = {}
        for r in reqs:
            if r.run_id:
                runs_by_action.setdefault(r.action, Counter())[
                    all_runs.get(r.run_id, "missing")] += 1
        latencies = sorted((r.headers_ns - r.sent_ns) / 1e6 for r in reqs
                           if r.status == 409 and r.headers_ns and r.sent_ns)
        outcomes = Counter(r.outcome() for r in reqs)
        by_status = dict(sorted(db["by_status"].items()))
        active_left = db["active"]
        untracked_n = len(untracked)
        interrupted = self.interrupt.signal is not None
        bursts = _burst_summary(self.bursts, self.restart)
        ok = (active_left == 0 and untracked_n == 0 and self.crash_count == 0
              and bursts["more_than_one_winner"] == 0 and not interrupted)
        reference_rss = [e["vm_hwm_kib"] for e in self.rss if e["vm_hwm_kib"] is not None]
        return {
            "schema": SCHEMA,
            "ok": ok,
            "interrupted": interrupted,
            "interrupt_signal": self.interrupt.signal,
            "crashes": self.crashes,
            "crash_count": self.crash_count,
            "must_be_zero": {"active_runs_left": active_left,
                             "untracked_provider_calls": untracked_n},
            "config": {"duration_s": self.duration_s, "seed": self.seed,
                       "instances": self.instances, "concurrency": self.concurrency,
                       "lease_s": self.lease_s, "target": "embedded",
                       "postgres": self.postgres_source, "autonomous_runs": False,
                       "reproduce": reproduce_line(self)},
            "timing_s": {"load": round(self.load_s, 3), "settle": round(self.settle_s, 3),
                         "total": round(total_s, 3)},
            "settle": {"bound_s": 3 * self.lease_s + 5,
                       "active_when_load_ended": self.active_at_load_end},
            "runs": {
                "started": sum(by_status.values()),
                "by_status": by_status,
                "ended": sum(n for s, n in by_status.items()
                             if s not in ("pending", "running")),
                "reaped": db["reaped"],
                "aborted_by_reason": db["aborted_by_reason"],
                "by_action": {a: dict(sorted(c.items()))
                              for a, c in sorted(runs_by_action.items())},
                "unattributed": len(set(all_runs) - stream_ids),
                "stream_ids_missing": len(stream_ids - set(all_runs)),
            },
            "requests": {
                "total": len(reqs),
                "by_outcome": dict(sorted(outcomes.items())),
                "by_action": {a: dict(sorted(c.items())) for a, c in sorted(by_action.items())},
                "conflicts": outcomes.get("409", 0),
                "conflict_latency_ms": _percentiles(latencies),
                "bursts": bursts,
                "stops": dict(sorted(self.stops.items())),
                "malformed_streams": sum(1 for r in reqs if r.findings and r.clean()),
                "per_minute": _per_minute(reqs),
            },
            "provider": {
                "calls": len(ledger),
                "by_mode": dict(sorted(Counter(c.mode for c in ledger).items())),
                "untracked_calls": untracked_n,
                "untracked_examples": [
                    {"nonce": c.nonce, "mode": c.mode,
                     "request": None if c.nonce not in self.reqs else {
                         "action": self.reqs[c.nonce].action,
                         "outcome": self.reqs[c.nonce].outcome(),
                         "run_id": self.reqs[c.nonce].run_id}}
                    for c in untracked[:10]],
                "repeat_calls": sum(n - 1 for n in per_nonce.values() if n > 1),
            },
            "restart": self.restart,
            "service_metrics": {"counters": dict(sorted(self.metrics.items())),
                                "scrapes": self.metrics_scrapes,
                                "failed_scrapes": self.metrics_failures},
            "resources": {
                "harness_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "reference_peak_rss_kib": max(reference_rss) if reference_rss else None,
                "reference_processes": self.rss,
            },
            "machine": {**machine_info(), "load_average_at_start": self.load_at_start},
        }


# -- helpers ------------------------------------------------------------------------------------

def req_run_id(racer: Racer) -> str | None:
    stream = racer.response.stream
    return None if stream is None else stream.run_id


async def _disconnect(req: Req, racer: Racer) -> None:
    """The client goes away mid-stream (a stream that already ended is left as it is)."""
    if not racer.finished.is_set():
        req.disconnected = True
        await racer.aclose()


def _send_failed(racer: Racer, exc: BaseException) -> None:
    racer.response.error = f"send failed: {type(exc).__name__}"
    racer.answered.set()
    racer.finished.set()


async def _send_whole(racer: Racer) -> None:
    try:
        await racer.send_whole()
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        _send_failed(racer, exc)


def _record(req: Req, racer: Racer) -> None:
    resp = racer.response
    req.status, req.sent_ns, req.headers_ns = resp.status, racer.sent_ns, resp.headers_ns
    req.error = req.error or resp.error
    if resp.stream is not None:
        req.run_id, req.chat_out = resp.stream.run_id, resp.stream.chat_id
        req.terminal, req.done = resp.stream.terminal, resp.stream.done
        req.findings = len(resp.stream.findings)


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5,
                           options="-c default_transaction_read_only=on")


_ACTIVE = "status IN ('pending', 'running')"


def _active_count(dsn: str) -> int:
    with _connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM ai_chat_runs WHERE {_ACTIVE}").fetchone()
    return int(row[0]) if row else 0


def _active_ids(dsn: str) -> list[str]:
    with _connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT id::text FROM ai_chat_runs WHERE {_ACTIVE}").fetchall()]


def _db_totals(dsn: str) -> dict[str, Any]:
    """Counts from ``ai_chat_runs`` (protocol §5): the service's own record of every run."""
    with _connect(dsn) as conn:
        runs = {r[0]: r[1] for r in conn.execute(
            "SELECT id::text, status FROM ai_chat_runs").fetchall()}
        reasons = {(r[0] or "(none)"): int(r[1]) for r in conn.execute(
            "SELECT error, count(*) FROM ai_chat_runs WHERE status = 'aborted' "
            "GROUP BY error ORDER BY error").fetchall()}
    by_status = Counter(runs.values())
    return {"runs": runs, "by_status": dict(by_status),
            "active": by_status.get("pending", 0) + by_status.get("running", 0),
            "reaped": reasons.get("lease expired", 0), "aborted_by_reason": reasons}


def _parse_metrics(text: str) -> Counter[str]:
    counters: Counter[str] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if not name or name.startswith("ai_chat_active_runs"):  # a gauge, not a counter
            continue
        try:
            counters[name] += int(float(value))
        except ValueError:
            continue
    return counters


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _per_minute(reqs: list[Req]) -> list[dict[str, int]]:
    """Requests, conflicts and runs started per minute of load (a slowdown shows here)."""
    rows: dict[int, Counter[str]] = {}
    for r in reqs:
        row = rows.setdefault(r.minute, Counter())
        row["requests"] += 1
        row["conflicts"] += r.status == 409
        row["runs"] += r.run_id is not None
    return [{"minute": m, "requests": c["requests"], "conflicts": c["conflicts"],
             "runs": c["runs"]} for m, c in sorted(rows.items())]


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return round(values[max(0, math.ceil(q * len(values)) - 1)], 3)

    return {"n": len(values), "p50": rank(0.50), "p99": rank(0.99), "max": round(values[-1], 3)}


def _burst_summary(bursts: list[dict[str, Any]], restart: dict[str, Any]) -> dict[str, Any]:
    """Winners per burst. A burst some of whose turns went to the instance killed while it was
    in flight can lose its winner's answer with the instance (``hit_by_restart``): zero
    winners is then expected; anywhere else it is a finding, and more than one always is."""
    def hit(b: dict[str, Any]) -> bool:
        killed = restart.get("killed_at_s")
        return (killed is not None and restart.get("instance") in b["instances"]
                and b["from_s"] <= killed <= b["to_s"] and b.get("unanswered", 0) > 0)

    sizes = [b["n"] for b in bursts]
    winners = Counter(str(b.get("winners", 0)) for b in bursts)
    return {"count": len(bursts), "requests": sum(sizes),
            "size_min": min(sizes) if sizes else None, "size_max": max(sizes) if sizes else None,
            "with_conflicts": sum(1 for b in bursts if b.get("conflicts")),
            "one_winner": sum(1 for b in bursts if b.get("winners") == 1),
            "more_than_one_winner": sum(1 for b in bursts if b.get("winners", 0) > 1),
            "hit_by_restart": sum(1 for b in bursts if hit(b)),
            "no_winner_unexplained": sum(1 for b in bursts
                                         if not b.get("winners") and not hit(b)),
            "by_winners": dict(sorted(winners.items())),
            "by_sync": dict(sorted(Counter(b["sync"] for b in bursts).items())),
            "by_end": dict(sorted(Counter(b["end"] for b in bursts).items()))}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
                    break
    except (OSError, ValueError):
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    load = _load_average()
    return {"cores": os.cpu_count(), "usable_cores": usable, "cpu_model": model,
            "memory_mib": None if mem_kib is None else mem_kib // 1024,
            "load_average_at_end": load, "python": platform.python_version(),
            "platform": platform.platform(terse=True)}


def reproduce_line(soak: Soak) -> str:
    return (f"harness soak --duration {soak.duration_s:g} --seed {soak.seed} "
            f"--instances {soak.instances} --concurrency {soak.concurrency} "
            f"--lease-s {soak.lease_s:g}")


# -- rendering ----------------------------------------------------------------------------------

def _counts(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    mbz, runs, reqs = result["must_be_zero"], result["runs"], result["requests"]
    lat, prov, restart = reqs["conflict_latency_ms"], result["provider"], result["restart"]
    cfg, res, machine = result["config"], result["resources"], result["machine"]
    bursts = reqs["bursts"]
    verdict = "ok" if result["ok"] else "NOT OK"
    if result["interrupted"]:
        verdict += f" (interrupted by {result['interrupt_signal']}: partial)"
    if result["crash_count"]:
        verdict += f" ({result['crash_count']} crash(es))"
    restart_text = (f"instance {restart['instance']} SIGKILLed at {restart['killed_at_s']}s "
                    f"holding a run, back in {restart['restart_s']}s"
                    if restart.get("done") else "not done")
    ref_rss = res["reference_peak_rss_kib"]
    return [
        ("verdict", verdict),
        ("active runs left (must be 0)", str(mbz["active_runs_left"])),
        ("provider calls without a tracked run (must be 0)",
         str(mbz["untracked_provider_calls"])),
        ("load", f"{result['timing_s']['load']:.0f}s, {cfg['concurrency']} workers, "
                 f"{cfg['instances']} instances, lease {cfg['lease_s']:g}s, seed {cfg['seed']}"),
        ("requests", f"{reqs['total']}: {_counts(reqs['by_outcome'])}"),
        ("conflicts (409)", f"{reqs['conflicts']}; last byte -> 409 p50 {_ms(lat['p50'])}, "
                            f"p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}"),
        ("bursts", f"{bursts['count']} of {bursts['size_min']}-{bursts['size_max']} turns on "
                   f"one chat: {bursts['with_conflicts']} with conflicts, "
                   f"{bursts['one_winner']} with exactly one winner, "
                   f"{bursts['more_than_one_winner']} with more (must be 0), "
                   f"{bursts['hit_by_restart']} hit by the restart"),
        ("runs started", f"{runs['started']}: {_counts(runs['by_status'])}"),
        ("runs ended", str(runs["ended"])),
        ("runs reaped (lease expired)", str(runs["reaped"])),
        ("stops", _counts(reqs["stops"])),
        ("provider calls", f"{prov['calls']}: {_counts(prov['by_mode'])}"),
        ("instance restart", restart_text),
        ("peak RSS", f"harness {res['harness_peak_rss_kib'] // 1024} MiB, reference "
                     f"{'?' if ref_rss is None else ref_rss // 1024} MiB (max per process)"),
        ("machine", f"{machine['cores']} cores ({machine['cpu_model'] or 'unknown CPU'}), "
                    f"{machine['memory_mib']} MiB, Python {machine['python']}"),
        ("duration", f"{result['timing_s']['total']:.0f}s in all (settle "
                     f"{result['timing_s']['settle']:.1f}s)"),
    ]


def render_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Soak: {result['config']['duration_s']:g}s of mixed load against the embedded "
             "reference", "",
             "Bursts on one chat, turns on distinct chats, stops, client disconnects, provider "
             "errors and one instance crash + restart; totals from `ai_chat_runs` and the fake "
             "provider's ledger.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in _rows(result)]
    lines += ["", f"Reproduce: `{result['config']['reproduce']}`", ""]
    if result["crashes"]:
        lines += ["Crashes:", "", *[f"- {c}" for c in result["crashes"]], ""]
    return "\n".join(lines)


def console_summary(result: dict[str, Any]) -> str:
    rows = _rows(result)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:{width}}  {v}" for k, v in rows)


# -- the command --------------------------------------------------------------------------------

def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [] if isinstance(exc, trio.Cancelled) else [exc]


def run_soak_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        print(f"harness soak: --out {args.out}: cannot write there: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    soak = Soak(args, int(seed))
    try:
        try:
            result = trio.run(soak.main)
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            if len(leaves) == 1:
                raise leaves[0] from group
            raise
    except (PostgresUnavailable, EmbeddedStartError) as exc:
        print(f"harness soak: environment unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except psycopg.OperationalError as exc:
        print(f"harness soak: the database stopped answering: {type(exc).__name__}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print("harness soak: interrupted before the load started", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result is None:
        print(f"harness soak: interrupted ({soak.interrupt.signal}) before the load started; "
              "nothing to report", file=sys.stderr)
        return EXIT_INTERRUPTED
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "soak.md").write_text(render_markdown(result), encoding="utf-8")
    print(console_summary(result))
    print(f"written: {out / 'soak.json'}, {out / 'soak.md'}")
    if result["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_OK if result["ok"] else EXIT_NOT_OK
