"""A scenario's steps, run in order on one trial's shared state.

Each step is a method ``step_<name>`` recording facts into the history (never judging). The
racers' response readers live in one nursery for the whole trial, so a burst's answers keep
arriving while later steps observe, stop or disconnect. Every wait is bounded; nothing is
retried. Steps that need a capability the target lacks never run: the scenario is skipped
before its first trial (see ``suite.py``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from raceharness.core.history import DbSnapshot, OpType, Trial
from raceharness.core.scenario import Scenario, Step
from raceharness.net.http1 import Racer, release_last_bytes
from raceharness.net.http2 import H2Burst, Http2Unavailable, open_h2_burst
from raceharness.trial.context import (
    Recorder,
    TargetUnreachable,
    TrialContext,
    losers_fast_bound_ms,
    race_text,
    turn_body,
    whole_turn,
)

P_HOLDER, P_SETUP, P_RELEASED, P_STOP, P_OBSERVE, P_CLEANUP, P_PROBE = (
    10_000, 10_001, 10_002, 10_003, 10_004, 10_005, 10_100)
P_DATABASE = 10_006
H2_SYNC = "h2-single-packet"
ACTIVE = ("pending", "running")

log = logging.getLogger(__name__)


class StepNotAvailable(Exception):
    """The step needs something this run does not have (the message says what)."""


@dataclass
class TrialState:
    readers: trio.Nursery
    chat_id: str | None = None
    chats: list[str] = field(default_factory=list)
    racers: list[Racer] = field(default_factory=list)
    nonces: list[str] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    recorded: set[int] = field(default_factory=set)
    winner: int | None = None
    holder: Racer | None = None
    previous_run_id: str | None = None
    holder_recorded: bool = False
    snapshots: list[DbSnapshot] = field(default_factory=list)
    h2: list[H2Burst] = field(default_factory=list)  # the burst's HTTP/2 connections
    database_down: bool = False  # the service's database was taken away and not yet given back

    def winner_run_id(self) -> str | None:
        if self.winner is None:
            return None
        return _stream_attr(self.racers[self.winner], "run_id")


class Program:
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
        for k, step in enumerate(self.scenario.steps):
            if self.decided is not None:
                # The trial's verdict is settled (a property is certainly invalid): the steps
                # left would only wait out the bounds of a broken service. The drain and the
                # cleanup still run; properties that needed the skipped steps say unknown.
                self.meta["cut_short"] = {"because": self.decided, "skipped": [
                    s.do for s in self.scenario.steps[k:]]}
                log.info("trial %s cut short after %s: %s", self.ctx.trial_no,
                         self.scenario.steps[k - 1].do, self.decided)
                return
            await getattr(self, "step_" + step.do.replace("-", "_"))(step)

    # -- helpers ----------------------------------------------------------------------------

    @property
    def bound_s(self) -> float:
        return self.ctx.config.answer_timeout_s

    def _provider_modes(self, modes: dict[str, str]) -> None:
        provider = self.ctx.provider
        if provider is not None:
            previous = provider.mode_for
            provider.mode_for = lambda nonce: modes.get(nonce or "", previous(nonce))

    def _record_racer(self, i: int) -> None:
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

    async def _stop(self, run_id: str, role: str, instance: int = 0) -> bool | None:
        self.rec.add("invoke", "stop", P_STOP, None, {"run_id": run_id, "role": role})
        try:
            with trio.fail_after(self.bound_s):
                status, stopped = await self.ctx.services[instance].stop(run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
            self.rec.add("info", "stop", P_STOP, None, {"error": type(exc).__name__})
            return None
        self.rec.add("ok", "stop", P_STOP, None, {"status": status, "stopped": stopped})
        return stopped

    # -- chats ------------------------------------------------------------------------------

    async def step_new_chat(self, step: Step) -> None:
        if self.scenario.reuse_chat and "chat_id" in self.shared:
            self.state.chat_id = self.shared["chat_id"]
            return
        if self.ctx.config.chat_id is not None:
            self.state.chat_id = self.ctx.config.chat_id
            return
        setup = await whole_turn(self.ctx, self.rec, P_SETUP, "setup", None, self.bound_s)
        if setup.get("status") != 200 or not setup.get("chat_id"):
            raise TargetUnreachable(_setup_problem(setup))
        self.state.chat_id = self.shared["chat_id"] = setup["chat_id"]
        self.state.previous_run_id = setup.get("run_id")

    async def step_new_chats(self, step: Step) -> None:
        n = step.arg("n", self.ctx.config.n)
        results: list[dict[str, Any]] = [{} for _ in range(n)]

        async def one(i: int) -> None:
            results[i] = await whole_turn(self.ctx, self.rec, P_SETUP + 1 + i, f"setup{i}",
                                          None, self.bound_s)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        for result in results:
            if result.get("status") != 200 or not result.get("chat_id"):
                raise TargetUnreachable(_setup_problem(result))
        self.state.chats = [r["chat_id"] for r in results]

    async def step_hold_turn(self, step: Step) -> None:
        """A turn that holds the chat (the provider holds it after one token)."""
        nonce = self.ctx.nonce("holder")
        self._provider_modes({nonce: "hold"})
        holder = self.ctx.racer(race_text(nonce, "holder"), self.state.chat_id)
        self.rec.add("invoke", "turn", P_HOLDER, nonce,
                     {"role": "holder", "chat_id": self.state.chat_id})
        with trio.fail_after(self.bound_s):
            await holder.connect()
            await holder.send_whole()
            self.state.readers.start_soon(holder.read_response)
            await holder.answered.wait()
        self.state.holder = holder

    # -- the burst --------------------------------------------------------------------------

    async def step_burst(self, step: Step) -> None:
        ctx, st, cfg = self.ctx, self.state, self.ctx.config
        n = step.arg("n", cfg.n)
        sync = step.arg("sync", cfg.sync)
        release = step.arg("release", "together")
        self._delays_ms: tuple[int, ...] = step.arg("delays_ms", ())
        distinct = step.arg("chats", "same") == "distinct"
        per_chat = max(1, step.arg("per-chat", 1))  # racers on each distinct chat
        if distinct and len(st.chats) * per_chat < n:
            raise StepNotAvailable(f"burst: chats='distinct' needs {-(-n // per_chat)} chats "
                                   f"from new-chats")
        st.nonces = [ctx.nonce(f"r{i}") for i in range(n)]
        self._provider_modes({nonce: step.arg("provider", "hold") for nonce in st.nonces})
        racer_chats = [st.chats[i // per_chat] if distinct else st.chat_id for i in range(n)]
        st.racers = [ctx.racer(race_text(st.nonces[i], "racer"), racer_chats[i],
                               instance=i % len(ctx.targets)) for i in range(n)]
        self.meta.update(n=n, sync=sync, release=release)
        st.h2 = []
        if sync == H2_SYNC and not await self._open_h2(racer_chats):
            sync = "last-byte"  # the target does not speak HTTP/2: said in the log and meta
        if not st.h2:
            async with trio.open_nursery() as nursery:
                for i, racer in enumerate(st.racers):
                    nursery.start_soon(self._prepare, i, racer,
                                       sync == "last-byte" and release != "after-first-start")
        live = [i for i in range(n) if i not in st.failed]
        release_ns = await self._release(sync, release, live)
        self.meta["release_ns"] = release_ns
        sent = [ns for i in live if (ns := st.racers[i].sent_ns) is not None]
        self.meta["send_spread_ns"] = (max(sent) - min(sent)) if sent else None
        for i in range(n):
            chat = racer_chats[i]
            if i in st.failed:
                self.rec.add("invoke", "turn", i, st.nonces[i],
                             {"role": "racer", "chat_id": chat}, time_ns=release_ns)
                self.rec.add("fail", "turn", i, st.nonces[i], {"error": st.failed[i]})
                continue
            self.rec.add("invoke", "turn", i, st.nonces[i],
                         {"role": "racer", "chat_id": chat, "sent_ns": st.racers[i].sent_ns},
                         time_ns=st.racers[i].sent_ns or release_ns)
        await self._await_answers(live, release_ns)
        st.winner = _first_winner(st.racers)
        if st.winner is not None and self.ctx.provider is not None:
            # The start frame comes before the provider call (protocol §2.7): wait, bounded,
            # until the winner's call has arrived, so a stop never lands before it. A service
            # that never calls is caught by race/winner-provider-call.
            # With several winners (a broken gate) a call is known by the nonce of the last
            # user message in the history it forwards, which may be another winner's: then
            # wait for as many calls as winners instead.
            provider, nonce = self.ctx.provider, st.nonces[st.winner]
            winners = {st.nonces[i] for i in _winners(st.racers)}

            def called() -> bool:
                return bool(provider.calls_for(nonce)) or len(winners) > 1 and sum(
                    c.nonce in winners for c in provider.calls) >= len(winners)

            with trio.move_on_after(self.ctx.config.provider_call_bound_s):
                await provider.wait_for(called)

    async def _await_answers(self, live: list[int], release_ns: int) -> None:
        """Until every racer in ``live`` has its answer, within the answer bound — or, when the
        scenario judges race/losers-fast, until its bound has passed and a winner is known: a
        loser unanswered then is a violation whatever it gets later, so waiting on cannot
        change the trial's verdict, and a service that holds its claims open would cost the
        whole answer bound on every trial. Late answers are still read (until drain)."""
        st = self.state
        racers = [st.racers[i] for i in live]
        full = trio.current_time() + self.bound_s
        if "race/losers-fast" in self.scenario.properties:
            last_sent = max((r.sent_ns or release_ns for r in racers), default=release_ns)
            cut_ns = last_sent + int((losers_fast_bound_ms(self.ctx.config) + 250) * 1e6)
            with trio.move_on_at(trio.current_time() + (cut_ns - time.monotonic_ns()) / 1e9):
                for racer in racers:
                    await racer.answered.wait()
            with trio.move_on_at(full):
                for racer in racers:
                    if _winners(st.racers) and not racer.answered.is_set():
                        cut_ms = round((time.monotonic_ns() - last_sent) / 1e6)
                        late = sum(not r.answered.is_set() for r in racers)
                        self.meta["answers_cut_ms"] = cut_ms
                        self.decided = (f"race/losers-fast: {late} racer(s) still unanswered "
                                        f"{cut_ms} ms after the last was sent, past the "
                                        f"{losers_fast_bound_ms(self.ctx.config):g} ms bound")
                        return
                    await racer.answered.wait()
            return
        with trio.move_on_at(full):
            for racer in racers:
                await racer.answered.wait()

    async def _prepare(self, i: int, racer: Racer, withhold: bool) -> None:
        try:
            with trio.fail_after(self.ctx.config.connect_timeout_s):
                await racer.connect()
                if withhold:
                    await racer.send_prefix()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.state.failed[i] = f"{type(exc).__name__}: {exc}"

    async def _open_h2(self, racer_chats: list[str | None]) -> bool:
        """Replace the racers by HTTP/2 streams, one burst per instance, every request but its
        final byte sent. False (nothing left open) when the target does not speak HTTP/2."""
        ctx, st = self.ctx, self.state
        by_instance: dict[int, list[int]] = {}
        for i in range(len(st.racers)):
            by_instance.setdefault(i % len(ctx.targets), []).append(i)
        racers: list[Any] = list(st.racers)
        for k, indices in by_instance.items():
            requests = [ctx.turn_request(race_text(st.nonces[i], "racer"), racer_chats[i], k)
                        for i in indices]
            try:
                burst = await open_h2_burst(ctx.targets[k].endpoint(), requests,
                                            nursery=st.readers,
                                            connect_timeout_s=ctx.config.connect_timeout_s)
            except Http2Unavailable as exc:
                note = f"HTTP/2 unavailable ({exc.why}): fell back to --sync last-byte"
                log.warning("%s for this burst", note)
                self.meta["h2_note"] = note
                self.meta["sync_used"] = "last-byte"
                for opened in st.h2:
                    await opened.aclose()
                st.h2 = []
                return False
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                for i in indices:
                    st.failed[i] = f"{type(exc).__name__}: {exc}"
                continue
            st.h2.append(burst)
            for i, stream in zip(indices, burst.racers, strict=True):
                racers[i] = stream
            if burst.note:
                log.info("h2-single-packet: %s", burst.note)
                self.meta["h2_note"] = burst.note
        st.racers = racers
        self.meta["sync_used"] = H2_SYNC
        return True

    async def _release_h2(self, release: str, racers: list[Any]) -> int:
        st = self.state
        if release == "after-first-start":
            first = racers[0]
            burst = next(b for b in st.h2 if first in b.racers)
            release_ns, _ = await burst.release([first])
            with trio.move_on_after(self.bound_s):
                await first.answered.wait()
            for b in st.h2:
                await b.release()
            return release_ns
        await trio.sleep(self.ctx.config.settle_ms / 1000)  # let the server take every prefix
        if release == "when-holder-stopped":
            await self._stop_holder_for_release()
        release_ns = time.monotonic_ns()
        for b in st.h2:
            await b.release()
        self.meta["h2_packets"] = sum(b.packets or 0 for b in st.h2)
        return release_ns

    async def _stop_holder_for_release(self) -> None:
        holder = self.state.holder
        run_id = None if holder is None or holder.response.stream is None else (
            holder.response.stream.run_id)
        if run_id is None:
            raise StepNotAvailable("burst: release='when-holder-stopped' needs hold-turn")
        await self._stop(run_id, "holder")

    async def _release(self, sync: str, release: str, live: list[int]) -> int:
        st = self.state
        racers = [st.racers[i] for i in live]
        for racer in racers:
            st.readers.start_soon(racer.read_response)
        if st.h2:
            return await self._release_h2(release, racers)
        if release == "after-first-start":
            release_ns = time.monotonic_ns()
            await _send_whole(racers[0])
            with trio.move_on_after(self.bound_s):
                await racers[0].answered.wait()
            delays = self._delays_ms or (0,)  # each later turn this long after the answer
            answered = trio.current_time()
            async with trio.open_nursery() as senders:
                for k, racer in enumerate(racers[1:]):
                    senders.start_soon(_send_whole_at, racer,
                                       answered + delays[k % len(delays)] / 1000)
            return release_ns
        if sync == "naive":
            release_ns = time.monotonic_ns()
            async with trio.open_nursery() as senders:
                for racer in racers:
                    senders.start_soon(_send_whole, racer)
            return release_ns
        await trio.sleep(self.ctx.config.settle_ms / 1000)  # let the server take every prefix
        if release == "when-holder-stopped":
            await self._stop_holder_for_release()
        release_ns, _ = await release_last_bytes(racers)
        return release_ns

    # -- observing --------------------------------------------------------------------------

    async def step_observe(self, step: Step) -> None:
        chat_id = self.state.chat_id
        if chat_id is None:
            raise StepNotAvailable("observe: no chat yet")
        await self._observe(step.arg("phase", "held"), chat_id)

    async def _observe(self, phase: str, chat_id: str) -> list[dict[str, Any]] | None:
        """One ``/runs`` answer for the chat (recorded as a ``runs`` op) and, with database
        access, a snapshot, both labelled ``phase``; returns the runs listed (None: no list)."""
        runs: list[dict[str, Any]] | None = None
        if self.ctx.target.profile.paths.runs:
            self.rec.add("invoke", "runs", P_OBSERVE, None, {"chat_id": chat_id, "phase": phase})
            try:
                with trio.fail_after(self.bound_s):
                    status, runs, truncated = await self.ctx.service.runs_page(chat_id)
            except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
                self.rec.add("info", "runs", P_OBSERVE, None,
                             {"phase": phase, "error": type(exc).__name__})
            else:
                self.rec.add("ok", "runs", P_OBSERVE, None,
                             {"phase": phase, "status": status, "runs": runs,
                              "truncated": truncated})
        if self.ctx.db is not None:
            self.state.snapshots.append(await self.ctx.db.snapshot(chat_id, phase))
        return runs

    async def _observe_until_ended(self, chat_id: str, run_id: str, phase: str,
                                   bound_s: float) -> None:
        """Poll ``/runs`` until ``run_id`` is listed and no longer active, or ``bound_s``
        passes; record only the last answer (a terminal write may land just after the stream
        ended, so one early look would blame a correct service). Then a database snapshot."""
        paths = self.ctx.target.profile.paths
        if not paths.runs:
            await self._final_run(P_OBSERVE, chat_id, phase, bound_s, run_id)
            if self.ctx.db is not None:
                self.state.snapshots.append(await self.ctx.db.snapshot(chat_id, phase))
            return
        self.rec.add("invoke", "runs", P_OBSERVE, None,
                     {"chat_id": chat_id, "phase": phase, "run_id": run_id})
        answer: dict[str, Any] = {"phase": phase, "status": 0, "runs": [], "truncated": False}
        kind: OpType = "info"
        with trio.move_on_after(bound_s):
            while True:
                try:
                    with trio.fail_after(self.bound_s):
                        status, runs, truncated = await self.ctx.service.runs_page(chat_id)
                except Exception as exc:  # noqa: BLE001 - no answer yet: poll within the bound
                    answer["error"] = type(exc).__name__
                else:
                    kind = "ok"
                    answer = {"phase": phase, "status": status, "runs": runs or [],
                              "truncated": truncated}
                    mine = [r for r in runs or [] if r.get("id") == run_id]
                    if status == 200 and mine and mine[0].get("status") not in ACTIVE:
                        break
                await trio.sleep(0.05)  # polling the service's own view: no event to wait on
        self.rec.add(kind, "runs", P_OBSERVE, None, answer)
        if self.ctx.db is not None:
            self.state.snapshots.append(await self.ctx.db.snapshot(chat_id, phase))

    async def step_wait_run_end(self, step: Step) -> None:
        """Until the winner's run is terminal (bounded), then record it with its message."""
        expect = step.arg("expect", "succeeded")
        self.meta["expect_end"] = expect
        if self.ctx.provider is not None and expect == "succeeded":
            self.meta["expected_content"] = "".join(self.ctx.provider.tokens)
        if self.state.chat_id is None:
            raise StepNotAvailable("wait-run-end: no chat yet")
        within = step.arg("within_s", None)
        if within is None:
            within = run_end_bound_s(self.ctx.settings, self.bound_s)
        await self._final_run(P_OBSERVE, self.state.chat_id, "final", within,
                              self.state.winner_run_id())

    # -- stopping, disconnecting, draining --------------------------------------------------

    async def step_stop_winner(self, step: Step) -> None:
        st, provider = self.state, self.ctx.provider
        run_id = st.winner_run_id()
        if st.winner is None or run_id is None:
            return
        owner = st.winner % len(self.ctx.services)  # racers are spread round-robin
        instance = owner if step.arg("via", "owner") == "owner" else (
            (owner + 1) % len(self.ctx.services))
        self.meta["stop_via_instance"] = instance
        await self._stop(run_id, "winner", instance)
        # A broken gate can let a second racer win on the same chat. Its run is stopped too
        # (role extra-winner): otherwise it streams on, the chat stays busy, and the trial
        # waits out every bound below for a call nobody stopped.
        chat = _stream_attr(st.racers[st.winner], "chat_id")
        for i in _winners(st.racers):
            extra = _stream_attr(st.racers[i], "run_id")
            if i != st.winner and extra is not None and \
                    _stream_attr(st.racers[i], "chat_id") == chat:
                await self._stop(extra, "extra-winner", i % len(self.ctx.services))
        bound = self.ctx.config.stop_bound_ms / 1000
        with trio.move_on_after(bound):
            await st.racers[st.winner].finished.wait()
        if provider is not None:
            with trio.move_on_after(bound):
                await provider.wait_disconnected(st.nonces[st.winner])
        observed = st.chat_id or chat
        if observed is not None:  # the evidence the stop took effect in the service's records
            await self._observe_until_ended(observed, run_id, "after-stop", bound)

    async def step_disconnect_winner(self, step: Step) -> None:
        st = self.state
        if st.winner is None:
            return
        racer = st.racers[st.winner]
        self.rec.add("invoke", "disconnect", P_STOP, st.nonces[st.winner],
                     {"run_id": st.winner_run_id()})
        self._record_racer(st.winner)  # what it had seen until it went away
        await racer.aclose()
        self.rec.add("ok", "disconnect", P_STOP, st.nonces[st.winner], {})

    async def step_release_provider(self, step: Step) -> None:
        if self.ctx.provider is not None:
            self.ctx.provider.mode_for = lambda nonce: "finish"
            self.ctx.provider.release_all()

    async def step_drain(self, step: Step) -> None:
        st = self.state
        await self.step_release_provider(step)
        with trio.move_on_after(self.ctx.config.drain_timeout_s):
            for i, racer in enumerate(st.racers):
                if i not in st.failed and i not in st.recorded:
                    await racer.finished.wait()
            if st.holder is not None:
                await st.holder.finished.wait()
        for i in range(len(st.racers)):
            self._record_racer(i)
        if st.holder is not None and st.holder.response.status is not None \
                and not st.holder_recorded:
            st.holder_recorded = True
            self.rec.add("ok", "turn", P_HOLDER, self.ctx.nonce("holder"),
                         {"sent_ns": st.holder.sent_ns, **st.holder.response.summary()})

    async def step_released_turn(self, step: Step) -> None:
        await whole_turn(self.ctx, self.rec, P_RELEASED, "released", self.state.chat_id,
                         self.bound_s)

    # -- disconnect storms ------------------------------------------------------------------

    async def step_disconnect_storm(self, step: Step) -> None:
        """N turns on N chats whose clients drop at seeded random points (before any frame,
        after the start frame, after the first token); then every run must end."""
        ctx, st = self.ctx, self.state
        n = step.arg("n", len(st.chats))
        if len(st.chats) < n or ctx.provider is None:
            raise StepNotAvailable("disconnect-storm: needs new-chats and the fake provider")
        rng = random.Random(ctx.seed)
        nonces = [ctx.nonce(f"storm{i}") for i in range(n)]
        self._provider_modes({nonce: "hold" for nonce in nonces})
        stops = not self.scenario.autonomous_runs
        self.meta["storm_expect"] = "aborted" if stops else "succeeded"
        if not stops:
            self.meta["expected_content"] = "".join(ctx.provider.tokens)

        seen_run = [False] * n

        async def client(i: int) -> None:
            racer = ctx.racer(race_text(nonces[i], "storm"), st.chats[i])
            point = rng.choice(("sent", "start", "token"))
            self.rec.add("invoke", "turn", P_PROBE + i, nonces[i],
                         {"role": "storm", "chat_id": st.chats[i], "drop_at": point})
            with trio.move_on_after(self.bound_s):
                await racer.connect()
                await racer.send_whole()
                if point != "sent":
                    async with trio.open_nursery() as reader:
                        reader.start_soon(racer.read_response)
                        await racer.answered.wait()
                        if point == "token":
                            await ctx.provider.wait_called(nonces[i])  # type: ignore[union-attr]
                        reader.cancel_scope.cancel()
            await racer.aclose()
            seen_run[i] = racer.response.stream is not None and bool(
                racer.response.stream.run_id)
            self.rec.add("ok", "turn", P_PROBE + i, nonces[i],
                         {"status": racer.response.status, "dropped_at": point,
                          "run_id": racer.response.stream.run_id
                          if racer.response.stream else None})

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(client, i)
        if stops:  # each dropped client must stop its run: the provider sees every call end
            with trio.move_on_after(self.bound_s):
                for i, nonce in enumerate(nonces):
                    if not seen_run[i]:
                        # Dropped before any frame: the service may rightly never have begun
                        # the turn (no call will come), or be ending a run it began.
                        await self._called_or_idle(nonce, st.chats[i])
                while pending := [nonce for nonce in nonces if self._call_open(nonce, 0)]:
                    await ctx.provider.wait_disconnected(pending[0])
            # A call open for longer than a stop may take, its client long gone: the stop
            # never reached the provider (storm/runs-end says so). A call that only began
            # just now (a turn the service took up late) is not held against it.
            late_ns = int(self.ctx.config.stop_bound_ms * 1e6)
            self.meta["storm_calls_open"] = [
                nonce for nonce in nonces if self._call_open(nonce, late_ns)]
            self.meta["storm_wait_s"] = self.bound_s
        await self.step_release_provider(step)
        for chat_id in st.chats[:n]:
            await self._final_run(P_OBSERVE, chat_id, "storm", self.bound_s)

    def _call_open(self, nonce: str, older_than_ns: int) -> bool:
        """A provider call for ``nonce`` has not ended and began over ``older_than_ns`` ago."""
        assert self.ctx.provider is not None
        now = time.monotonic_ns()
        return any(not c.gone.is_set() and now - c.arrival_ns > older_than_ns
                   for c in self.ctx.provider.calls_for(nonce))

    async def _called_or_idle(self, nonce: str, chat_id: str) -> None:
        """Until the provider has a call for ``nonce`` or the chat has no active run (a bounded
        poll of the service's own view, by the caller's bound)."""
        assert self.ctx.provider is not None
        while not self.ctx.provider.calls_for(nonce):
            try:
                _, run, _ = await self.ctx.service.latest(chat_id)
            except Exception:  # noqa: BLE001 - no answer: keep polling within the bound
                run = {"status": "running"}
            if run is None or run.get("status") not in ("pending", "running"):
                return
            await trio.sleep(0.05)  # polling the service's own view: no event to wait on

    async def _final_run(self, process: int, chat_id: str, phase: str, bound_s: float,
                         run_id: str | None = None) -> None:
        """Poll ``/run`` until the chat's latest run is terminal (bounded); record it."""
        self.rec.add("invoke", "run", process, None,
                     {"chat_id": chat_id, "phase": phase, "run_id": run_id})
        status, run, message = 0, None, None
        with trio.move_on_after(bound_s):
            while True:
                try:
                    status, run, message = await self.ctx.service.latest(chat_id)
                except Exception:  # noqa: BLE001 - no answer: keep polling within the bound
                    status = 0
                else:
                    if run is None or run.get("status") not in ("pending", "running"):
                        break
                await trio.sleep(0.05)  # polling the service's own view: no event to wait on
        self.rec.add("ok" if status else "info", "run", process, None, {
            "phase": phase, "status": status, "chat_id": chat_id,
            "runs": [] if run is None else [{"id": run.get("id"), "status": run.get("status")}],
            "run": None if run is None else {k: run.get(k) for k in ("id", "status", "error")},
            "message": None if message is None else {
                "status": message.get("status"), "content": str(message.get("content"))[:2000]},
        })

    # -- a long hold: the service's own clocks (heartbeat, lease, reaper) run -----------------

    async def step_hold_past(self, step: Step) -> None:
        """Keep the winner held while the service's heartbeat renews its lease several times
        and the lease itself runs out once over: a lease that is not renewed, or is written
        shorter than the heartbeat, has then expired, and a reaper has had its turn. The wait
        is the point of the step (the service's clock must move), not a synchronisation."""
        settings = self.ctx.settings
        if "heartbeat_s" not in settings or "lease_s" not in settings:
            raise StepNotAvailable("hold-past: needs the service's heartbeat interval and lease "
                                   "(--heartbeat S and --lease S)")
        hold = hold_past_s(settings, step.arg("intervals", 3))
        self.meta["held_s"] = round(hold, 3)
        await trio.sleep(hold)

    async def step_late_turns(self, step: Step) -> None:
        """While the winner is still held: more turns one after another, at ``singles`` phases
        a fraction of the service's heartbeat apart, one to each instance at each phase (so
        they meet its lease at different points of its renewal, on an instance that does not
        own the run too: a lease written shorter than the heartbeat is expired at most of
        them), then a burst of ``n``. All are recorded as racers: the same properties judge
        them (each must get 409 naming the holder, and none may win)."""
        ctx, st = self.ctx, self.state
        if st.chat_id is None:
            raise StepNotAvailable("late-turns: no chat yet")
        n, phases = step.arg("n", ctx.config.n), max(1, step.arg("singles", 3))
        gap_s = ctx.settings.get("heartbeat_s", 0.3) / phases
        instances = len(ctx.targets)
        singles = phases * instances  # at each phase, one turn to every instance
        base = len(st.racers)
        nonces = [ctx.nonce(f"late{k}") for k in range(singles + n)]
        self._provider_modes({nonce: "hold" for nonce in nonces})
        st.racers += [ctx.racer(race_text(nonce, "racer"), st.chat_id,
                                instance=k % instances) for k, nonce in enumerate(nonces)]
        st.nonces += nonces
        for k in range(base, base + singles):
            if k > base and (k - base) % instances == 0:
                await trio.sleep(gap_s)  # the next phase of the heartbeat, by design
            racer = st.racers[k]
            try:
                with trio.fail_after(ctx.config.connect_timeout_s):
                    await racer.connect()
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                st.failed[k] = f"{type(exc).__name__}: {exc}"
            else:
                st.readers.start_soon(racer.read_response)
                await _send_whole(racer)
                with trio.move_on_after(self.bound_s):
                    await racer.answered.wait()
            self._record_invokes([k], racer.sent_ns or time.monotonic_ns())
        burst = list(range(base + singles, base + singles + n))
        async with trio.open_nursery() as nursery:
            for k in burst:
                nursery.start_soon(self._prepare, k, st.racers[k], True)
        live = [k for k in burst if k not in st.failed]
        for k in live:
            st.readers.start_soon(st.racers[k].read_response)
        await trio.sleep(ctx.config.settle_ms / 1000)  # let the server take every prefix
        release_ns, _ = await release_last_bytes([st.racers[k] for k in live])
        self._record_invokes(burst, release_ns)
        await self._await_answers(live, release_ns)

    def _record_invokes(self, indices: list[int], release_ns: int) -> None:
        st = self.state
        for i in indices:
            if i in st.failed:
                self.rec.add("invoke", "turn", i, st.nonces[i],
                             {"role": "racer", "chat_id": st.chat_id}, time_ns=release_ns)
                self.rec.add("fail", "turn", i, st.nonces[i], {"error": st.failed[i]})
                continue
            sent = st.racers[i].sent_ns
            self.rec.add("invoke", "turn", i, st.nonces[i],
                         {"role": "racer", "chat_id": st.chat_id, "sent_ns": sent},
                         time_ns=sent or release_ns)

    # -- stale stops, foreign users, bad input ----------------------------------------------

    async def step_stale_stop(self, step: Step) -> None:
        """``/stop`` aimed at the chat's previous (ended) run while a newer run is live."""
        if self.state.previous_run_id is None:
            raise StepNotAvailable("stale-stop: no ended run to aim at (new-chat makes one)")
        await self.step_observe(Step("observe", {"phase": "before-stale"}))
        await self._stop(self.state.previous_run_id, "stale")
        await self.step_observe(Step("observe", {"phase": "after-stale"}))

    async def step_foreign_user(self, step: Step) -> None:
        other = self.ctx.target.other_token
        chat_id, run_id = self.state.chat_id, self.state.winner_run_id()
        if other is None or chat_id is None:
            raise StepNotAvailable("foreign-user: needs --other-token and a chat")
        paths = self.ctx.target.profile.paths
        nonce = self.ctx.nonce("foreign")
        await self.step_observe(Step("observe", {"phase": "before-foreign"}))
        probes: list[tuple[str, str, dict[str, Any]]] = [
            ("stream", paths.stream, {"content": turn_body(race_text(nonce, "foreign"), chat_id),
                                      "headers": {"content-type": "application/json"}}),
            ("stop-run", paths.stop, {"json": {"runId": run_id}}),
            ("stop-chat", paths.stop, {"json": {"chatId": chat_id}}),
            ("run", paths.run, {"json": {"chatId": chat_id}}),
        ]
        for k, (label, path, kwargs) in enumerate(probes):
            tag = nonce if label == "stream" else None  # its provider call would carry it
            self.rec.add("invoke", "probe", P_PROBE + k, tag,
                         {"role": "foreign", "label": label, "expect_status": 403})
            status = await self._probe("POST", path, other, **kwargs)
            self.rec.add("ok" if status else "info", "probe", P_PROBE + k, tag,
                         {"status": status})
        if paths.runs:
            k = len(probes)
            self.rec.add("invoke", "probe", P_PROBE + k, None,
                         {"role": "foreign", "label": "runs", "expect_status": 403})
            status = await self._probe("GET", paths.runs, other, params={"chatId": chat_id})
            self.rec.add("ok" if status else "info", "probe", P_PROBE + k, None,
                         {"status": status})
        await self.step_observe(Step("observe", {"phase": "after-foreign"}))

    async def _probe(self, method: str, path: str, token: str | None, **kwargs: Any) -> int:
        try:
            with trio.fail_after(self.bound_s):
                return await self.ctx.service.raw(method, path, token, **kwargs)
        except Exception:  # noqa: BLE001 - no answer is recorded as status 0 (info)
            return 0

    async def step_bad_inputs(self, step: Step) -> None:
        chat_id = self.state.chat_id
        nonce = self.ctx.nonce("bad")
        text = race_text(nonce, "bad-input")
        good = json.loads(turn_body(text, chat_id))
        cases: list[tuple[str, bytes, int, bool]] = [
            ("malformed-json", b'{"messages": [', 400, True),
            ("array-body", b"[]", 400, True),
            ("missing-messages", json.dumps({"chatId": chat_id}).encode(), 400, True),
            ("text-not-a-string", json.dumps({**good, "messages": [
                {"role": "user", "parts": [{"type": "text", "text": 7}]}]}).encode(), 400, True),
            ("no-user-text", json.dumps({**good, "messages": [
                {"role": "user", "parts": [{"type": "text", "text": "   "}]}]}).encode(),
             400, True),
            ("chat-id-not-a-uuid", json.dumps({**good, "chatId": "not-a-uuid"}).encode(),
             400, True),
            ("oversize", json.dumps({**good, "pad": "x" * (1024 * 1024 + 16)}).encode(),
             413, True),
            ("no-token", turn_body(text, chat_id), 401, False),
        ]
        paths = self.ctx.target.profile.paths
        for k, (label, body, expect, auth) in enumerate(cases):
            self.rec.add("invoke", "probe", P_PROBE + k, nonce,
                         {"role": "bad-input", "label": label, "expect_status": expect})
            status = await self._probe("POST", paths.stream, None, authenticated=auth,
                                       content=body, headers={"content-type": "application/json"})
            self.rec.add("ok" if status else "info", "probe", P_PROBE + k, nonce,
                         {"status": status})

    # -- control of the embedded stack (crash-recovery, db-outage) -------------------------

    def _control(self, step: str) -> Any:
        if self.ctx.control is None:
            raise StepNotAvailable(f"{step}: needs the embedded stack (the harness never kills "
                                   "or breaks what it did not start)")
        return self.ctx.control

    async def step_kill_owner(self, step: Step) -> None:
        """SIGKILL the instance that streams the winner's run: a crash, no cleanup."""
        control, st = self._control("kill-owner"), self.state
        owner = 0 if st.winner is None else st.winner % len(self.ctx.targets)
        self.rec.add("invoke", "kill", P_STOP, None, {"instance": owner,
                                                      "run_id": st.winner_run_id()})
        await control.kill(owner)
        self.rec.add("ok", "kill", P_STOP, None, {"instance": owner})
        self.meta["killed_instance"] = owner

    async def step_restart_service(self, step: Step) -> None:
        """Start the killed instance again; then a turn within the lease must still get 409."""
        control = self._control("restart-service")
        k = self.meta.get("killed_instance", 0)
        await control.restart(k)
        await whole_turn(self.ctx, self.rec, P_PROBE, "blocked", self.state.chat_id,
                         self.bound_s)

    async def step_expire_lease(self, step: Step) -> None:
        """Wait (bounded by three leases) until the dead owner's run is reclaimed."""
        self.meta["expect_reclaim"] = True
        if self.state.chat_id is None:
            raise StepNotAvailable("expire-lease: no chat yet")
        lease_s = self.ctx.settings.get("lease_s") or self.scenario.lease_s or 10.0
        await self._final_run(P_OBSERVE, self.state.chat_id, "reclaimed", 3 * lease_s + 5,
                              self.state.winner_run_id())

    async def step_database_outage(self, step: Step) -> None:
        """While run inserts fail in the database, N turns must each get 503
        A_RUN_BEGIN_FAILED: no stream, no provider call."""
        control = self._control("database-outage")
        n = self.ctx.config.n
        await trio.to_thread.run_sync(control.reject_run_inserts, True)
        try:
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(whole_turn, self.ctx, self.rec, P_PROBE + i,
                                       f"outage{i}", self.state.chat_id, self.bound_s)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(control.reject_run_inserts, False)

    # -- a real database outage: backends terminated, connections refused ------------------

    def _database_control(self, step: str) -> Any:
        control = self._control(step)
        if not control.controls_database:
            raise StepNotAvailable(f"{step}: the service runs on the DSN's own database; the "
                                   "harness takes away only a database it created")
        return control

    async def _take_database_down(self, control: Any, at: str, **info: Any) -> None:
        self.rec.add("invoke", "database", P_DATABASE, None,
                     {"action": "down", "at": at, "run_id": self.state.winner_run_id(), **info})
        self.state.database_down = True
        terminated = await trio.to_thread.run_sync(control.database_down)
        self.rec.add("ok", "database", P_DATABASE, None,
                     {"action": "down", "terminated": terminated})

    async def _outage_turns(self, n: int, role: str) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(whole_turn, self.ctx, self.rec, P_PROBE + i, f"{role}{i}",
                                   self.state.chat_id, self.bound_s)

    async def step_database_down(self, step: Step) -> None:
        """Postgres goes away under the service (as when it stops): every backend of its
        database is terminated and new connections are refused, until database-up."""
        control = self._database_control("database-down")
        await self._take_database_down(control, "stream" if self.state.winner_run_id() else "idle")

    async def step_burst_into_outage(self, step: Step) -> None:
        """N turns at once; the harness holds each inside the gate (its run INSERT queued
        behind an uncommitted run of the harness's) until all N wait there, then takes the
        database away under them. Each must get a clean refusal: no stream, no provider call.
        The database stays down."""
        control = self._database_control("burst-into-outage")
        n = step.arg("n", self.ctx.config.n)
        if self.state.chat_id is None:
            raise StepNotAvailable("burst-into-outage: no chat yet")
        await trio.to_thread.run_sync(control.hold_gate, self.state.chat_id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._outage_turns, n, "outage-gate")
                waiting = 0
                with trio.move_on_after(self.bound_s):
                    while (waiting := await trio.to_thread.run_sync(  # noqa: ASYNC110 - a
                            control.gate_waiters)) < n:  # database condition: no event to await
                        await trio.sleep(0.02)
                await self._take_database_down(control, "gate", waiting=waiting, n=n)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(control.release_gate)

    async def step_burst_during_outage(self, step: Step) -> None:
        """N turns at once while the database is down (connections refused): each must get a
        clean refusal, promptly, with no stream and no provider call."""
        if not self.state.database_down or self.state.chat_id is None:
            raise StepNotAvailable("burst-during-outage: needs a chat and the database down "
                                   "(database-down or burst-into-outage first)")
        await self._outage_turns(step.arg("n", self.ctx.config.n), "outage-down")

    async def step_database_up(self, step: Step) -> None:
        """Give the database back; then observe the chat until the service answers and no
        run of it is active (bounded by within_s), and record what was seen last."""
        control = self._database_control("database-up")
        self.rec.add("invoke", "database", P_DATABASE, None, {"action": "up"})
        await trio.to_thread.run_sync(control.database_up)
        self.state.database_down = False
        self.rec.add("ok", "database", P_DATABASE, None, {"action": "up"})
        chat_id = self.state.chat_id
        if chat_id is None:
            return
        within_s = step.arg("within_s", 30)
        self.rec.add("invoke", "runs", P_OBSERVE, None,
                     {"chat_id": chat_id, "phase": "recovered", "within_s": within_s})
        t0 = time.monotonic()
        status, runs = 0, None
        with trio.move_on_after(within_s):
            while True:
                try:
                    with trio.fail_after(self.bound_s):
                        status, runs = await self.ctx.service.runs(chat_id)
                except Exception:  # noqa: BLE001 - no answer yet: keep polling within the bound
                    status, runs = 0, None
                if status == 200 and runs is not None and not any(
                        r.get("status") in ("pending", "running") for r in runs):
                    break
                await trio.sleep(0.05)  # polling the service's own view: no event to wait on
        self.rec.add("ok" if status else "info", "runs", P_OBSERVE, None, {
            "phase": "recovered", "status": status, "runs": runs or [],
            "waited_ms": round((time.monotonic() - t0) * 1000)})
        if self.ctx.db is not None:
            self.state.snapshots.append(await self.ctx.db.snapshot(chat_id, "recovered"))


async def _send_whole(racer: Racer) -> None:
    try:
        await racer.send_whole()
    except (OSError, trio.BrokenResourceError) as exc:
        racer.response.error = f"send failed: {type(exc).__name__}"
        racer.answered.set()
        racer.finished.set()


async def _send_whole_at(racer: Racer, deadline: float) -> None:
    await trio.sleep_until(deadline)  # a planned send time, not a wait for a condition
    await _send_whole(racer)


def _stream_attr(racer: Racer, name: str) -> str | None:
    """``run_id`` or ``chat_id`` from the racer's start frame, if it had one."""
    stream = racer.response.stream
    return None if stream is None else getattr(stream, name)


def _winners(racers: list[Racer]) -> list[int]:
    """The racers answered 200 (with headers seen), in racer order."""
    return [i for i, r in enumerate(racers) if r.response.status == 200 and r.response.headers_ns]


def _first_winner(racers: list[Racer]) -> int | None:
    winners = _winners(racers)
    tracked = [i for i in winners if _stream_attr(racers[i], "run_id")]
    pool = tracked or winners
    return min(pool, key=lambda i: racers[i].response.headers_ns or 0) if pool else None


def run_end_bound_s(settings: dict[str, float], default_s: float) -> float:
    """How long a run may take to end on its own: past the service's provider read timeout
    (when the scenario relies on it) with a margin, else the answer bound."""
    timeout = settings.get("provider_timeout_s")
    return default_s if timeout is None else timeout * 1.5 + 5


def hold_past_s(settings: dict[str, float], intervals: int) -> float:
    """hold-past's wait: ``intervals`` heartbeats, and at least the lease plus two heartbeats."""
    heartbeat, lease = settings["heartbeat_s"], settings["lease_s"]
    return max(intervals * heartbeat, lease + 2 * heartbeat)


def planned_wait_s(scenario: Scenario, settings: dict[str, float], answer_s: float) -> float:
    """The waits a scenario's steps take from the service's settings (what --max-wait caps)."""
    total = 0.0
    for step in scenario.steps:
        if step.do == "wait-run-end" and step.arg("within_s", None) is None:
            total += run_end_bound_s(settings, answer_s)
        elif step.do == "hold-past" and {"heartbeat_s", "lease_s"} <= settings.keys():
            total += hold_past_s(settings, step.arg("intervals", 3))
        elif step.do == "expire-lease" and "lease_s" in settings:
            total += 3 * settings["lease_s"] + 5
    return total


def _setup_problem(setup: dict[str, Any]) -> str:
    status = setup.get("status")
    if status is None:
        return f"the set-up turn got no answer ({setup.get('error', 'no response')})"
    if status in (401, 403):
        return f"the set-up turn was refused with {status}: check --token"
    return f"the set-up turn answered {status}, not a 200 stream with a chatId"


async def run_scenario_trial(ctx: TrialContext, scenario: Scenario,
                             shared: dict[str, Any]) -> Trial:
    """One trial of ``scenario``: its steps, then cleanup; returns the evidence."""
    cfg = ctx.config
    rec = Recorder(ctx.trial_no, ctx.writer)
    meta: dict[str, Any] = {
        "trial": ctx.trial_no, "seed": ctx.seed, "scenario": scenario.name, "n": cfg.n,
        "sync": cfg.sync, "losers_fast_bound_ms": losers_fast_bound_ms(cfg),
        "stop_bound_ms": cfg.stop_bound_ms, "provider_access": ctx.provider is not None,
        "db_access": ctx.db is not None, "instances": len(ctx.targets),
    }
    ended = False
    try:
        trial = await _steps(ctx, scenario, shared, rec, meta)
        ended = True
        return trial
    except StepNotAvailable as exc:
        ended = True
        if ctx.writer is not None:  # not a verdict: `harness check` leaves it out
            ctx.writer.trial_start({"trial": ctx.trial_no, "skipped": str(exc)})
        raise
    finally:
        if not ended and ctx.writer is not None:  # cut off (Ctrl-C, a crash): say so
            ctx.writer.trial_start({"trial": ctx.trial_no, "interrupted": True})


async def _steps(ctx: TrialContext, scenario: Scenario, shared: dict[str, Any], rec: Recorder,
                 meta: dict[str, Any]) -> Trial:
    provider = ctx.provider
    ledger_start = len(provider.calls) if provider is not None else 0
    if provider is not None:
        provider.reset()
        provider.mode_for = lambda nonce: "finish"
    if ctx.writer is not None:
        ctx.writer.trial_start(meta)
    unavailable: StepNotAvailable | None = None
    async with trio.open_nursery() as readers:
        state = TrialState(readers=readers)
        program = Program(ctx, scenario, rec, meta, state, shared)
        try:
            await program.run()
        except StepNotAvailable as exc:  # re-raised outside the nursery, not in a group
            unavailable = exc
        finally:
            ctx.racers = [*state.racers, *([state.holder] if state.holder else [])]
            with trio.CancelScope(shield=True):
                if state.database_down:  # a step failed with the database away: give it back
                    await trio.to_thread.run_sync(ctx.control.database_up)
                    state.database_down = False
                await program.step_drain(Step("drain"))
                await _cleanup(program)
            readers.cancel_scope.cancel()
    if unavailable is not None:
        raise unavailable
    meta["chat_id"] = state.chat_id
    meta["ended"] = True  # a history trial without it was cut off (history.py)
    if ctx.writer is not None:
        ctx.writer.trial_start(meta)  # the completed meta: chat, release instant, spread
    trial = Trial(meta=meta, ops=rec.ops,
                  provider=provider.ledger(ledger_start) if provider is not None else None,
                  db=state.snapshots if ctx.db is not None else None)
    if ctx.writer is not None:
        ctx.writer.provider(ctx.trial_no, trial.provider)
        ctx.writer.db(ctx.trial_no, trial.db)
    return trial


async def _cleanup(program: Program) -> None:
    """Record what the service lists for each of the trial's chats (phase ``cleanup``: the
    evidence that every run the trial saw is one the service reports), then stop every run
    still active there (bounded; recorded)."""
    ctx, st = program.ctx, program.state
    if not ctx.target.profile.paths.runs:
        return
    chats = [c for c in [st.chat_id, *st.chats] if c]
    with trio.move_on_after(10):
        for chat_id in chats:
            program.rec.add("invoke", "runs", P_CLEANUP, None,
                            {"chat_id": chat_id, "phase": "cleanup"})
            try:
                status, runs, truncated = await ctx.service.runs_page(chat_id)
            except Exception as exc:  # noqa: BLE001 - best effort; the lease reclaims the rest
                program.rec.add("info", "runs", P_CLEANUP, None,
                                {"phase": "cleanup", "error": type(exc).__name__})
                continue
            program.rec.add("ok", "runs", P_CLEANUP, None,
                            {"phase": "cleanup", "status": status, "runs": runs or [],
                             "truncated": truncated})
            for run in runs or []:
                if run.get("status") in ACTIVE and run.get("id"):
                    await program._stop(str(run["id"]), "cleanup")
