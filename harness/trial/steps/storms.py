"""disconnect-storm: N clients on N chats drop at seeded random points; every run must end."""

from __future__ import annotations

import random
import time

import trio

from raceharness.core.protocol import ACTIVE_STATUSES
from raceharness.core.scenario import Step
from raceharness.core.steps import Phase
from raceharness.trial.context import race_text
from raceharness.trial.steps.base import P_OBSERVE, P_PROBE, Program, StepNotAvailable, step
from raceharness.trial.steps.observe import final_run
from raceharness.trial.steps.stop import release_provider


@step("disconnect-storm")
async def disconnect_storm(p: Program, call: Step) -> None:
    """N turns on N chats whose clients drop at seeded random points (before any frame,
    after the start frame, after the first token); then every run must end."""
    ctx, st = p.ctx, p.state
    n = call.arg("n", len(st.chats))
    if len(st.chats) < n or ctx.provider is None:
        raise StepNotAvailable("disconnect-storm: needs new-chats and the fake provider")
    provider = ctx.provider
    rng = random.Random(ctx.seed)
    nonces = [ctx.nonce(f"storm{i}") for i in range(n)]
    p.provider_modes({nonce: "hold" for nonce in nonces})
    stops = not p.scenario.autonomous_runs
    p.meta["storm_expect"] = "aborted" if stops else "succeeded"
    if not stops:
        p.meta["expected_content"] = "".join(provider.tokens)

    seen_run = [False] * n

    async def client(i: int) -> None:
        racer = ctx.racer(race_text(nonces[i], "storm"), st.chats[i])
        point = rng.choice(("sent", "start", "token"))
        p.rec.add("invoke", "turn", P_PROBE + i, nonces[i],
                  {"role": "storm", "chat_id": st.chats[i], "drop_at": point})
        with trio.move_on_after(p.bound_s):
            await racer.connect()
            await racer.send_whole()
            if point != "sent":
                async with trio.open_nursery() as reader:
                    reader.start_soon(racer.read_response)
                    await racer.answered.wait()
                    if point == "token":
                        await provider.wait_called(nonces[i])
                    reader.cancel_scope.cancel()
        await racer.aclose()
        seen_run[i] = racer.response.stream is not None and bool(racer.response.stream.run_id)
        p.rec.add("ok", "turn", P_PROBE + i, nonces[i],
                  {"status": racer.response.status, "dropped_at": point,
                   "run_id": racer.response.stream.run_id if racer.response.stream else None})

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(client, i)
    if stops:  # each dropped client must stop its run: the provider sees every call end
        with trio.move_on_after(p.bound_s):
            for i, nonce in enumerate(nonces):
                if not seen_run[i]:
                    # Dropped before any frame: the service may rightly never have begun
                    # the turn (no call will come), or be ending a run it began.
                    await _called_or_idle(p, nonce, st.chats[i])
            while pending := [nonce for nonce in nonces if _call_open(p, nonce, 0)]:
                await provider.wait_disconnected(pending[0])
        # A call open for longer than a stop may take, its client long gone: the stop
        # never reached the provider (storm/runs-end says so). A call that only began
        # just now (a turn the service took up late) is not held against it.
        late_ns = int(p.ctx.config.stop_bound_ms * 1e6)
        p.meta["storm_calls_open"] = [nonce for nonce in nonces if _call_open(p, nonce, late_ns)]
        p.meta["storm_wait_s"] = p.bound_s
    await release_provider(p, call)
    for chat_id in st.chats[:n]:
        await final_run(p, P_OBSERVE, chat_id, Phase.STORM, p.bound_s)


def _call_open(p: Program, nonce: str, older_than_ns: int) -> bool:
    """A provider call for ``nonce`` has not ended and began over ``older_than_ns`` ago."""
    assert p.ctx.provider is not None
    now = time.monotonic_ns()
    return any(not c.gone.is_set() and now - c.arrival_ns > older_than_ns
               for c in p.ctx.provider.calls_for(nonce))


async def _called_or_idle(p: Program, nonce: str, chat_id: str) -> None:
    """Until the provider has a call for ``nonce`` or the chat has no active run (a bounded
    poll of the service's own view, by the caller's bound)."""
    assert p.ctx.provider is not None
    while not p.ctx.provider.calls_for(nonce):
        try:
            _, run, _ = await p.ctx.service.latest(chat_id)
        except Exception:  # noqa: BLE001 - no answer: keep polling within the bound
            run = {"status": "running"}
        if run is None or run.get("status") not in ACTIVE_STATUSES:
            return
        await trio.sleep(0.05)  # polling the service's own view: no event to wait on
