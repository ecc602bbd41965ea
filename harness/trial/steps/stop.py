"""Ending the winner's stream: stop-winner, disconnect-winner, release-provider, drain."""

from __future__ import annotations

import trio

from raceharness.core.scenario import Step
from raceharness.core.steps import Phase
from raceharness.net.race_request import RaceRequest
from raceharness.trial.context import settle_terminal
from raceharness.trial.steps.base import P_HOLDER, P_STOP, Program, step, stream_attr, winners
from raceharness.trial.steps.observe import observe_until_ended


@step("stop-winner")
async def stop_winner(p: Program, call: Step) -> None:
    st, provider = p.state, p.ctx.provider
    run_id = st.winner_run_id()
    if st.winner is None or run_id is None:
        return
    owner = st.winner % len(p.ctx.services)  # racers are spread round-robin
    instance = owner if call.arg("via") == "owner" else (owner + 1) % len(p.ctx.services)
    p.meta["stop_via_instance"] = instance
    await p.stop_run(run_id, "winner", instance)
    # A broken gate can let a second racer win on the same chat. Its run is stopped too
    # (role extra-winner): otherwise it streams on, the chat stays busy, and the trial
    # waits out every bound below for a call nobody stopped.
    chat = stream_attr(st.racers[st.winner], "chat_id")
    for i in winners(st.racers):
        extra = stream_attr(st.racers[i], "run_id")
        if i != st.winner and extra is not None and stream_attr(st.racers[i], "chat_id") == chat:
            await p.stop_run(extra, "extra-winner", i % len(p.ctx.services))
    bound = p.ctx.config.stop_bound_ms / 1000
    with trio.move_on_after(bound):
        await st.racers[st.winner].finished.wait()
    if provider is not None:
        with trio.move_on_after(bound):
            await provider.wait_disconnected(st.nonces[st.winner])
    observed = st.chat_id or chat
    if observed is not None:  # the evidence the stop took effect in the service's records
        await observe_until_ended(p, observed, run_id, Phase.AFTER_STOP, bound)


@step("disconnect-winner")
async def disconnect_winner(p: Program, call: Step) -> None:
    st = p.state
    if st.winner is None:
        return
    racer = st.racers[st.winner]
    p.rec.add("invoke", "disconnect", P_STOP, st.nonces[st.winner],
              {"run_id": st.winner_run_id()})
    p.record_racer(st.winner)  # what it had seen until it went away
    await racer.aclose()
    p.rec.add("ok", "disconnect", P_STOP, st.nonces[st.winner], {})


@step("release-provider")
async def release_provider(p: Program, call: Step) -> None:
    if p.ctx.provider is not None:
        p.ctx.provider.mode_for = lambda nonce: "finish"
        p.ctx.provider.release_all()


async def settle_terminals(p: Program, racers: list[RaceRequest]) -> None:
    """Streams that ended without a terminal frame (an adapter whose streams end with the
    run's status): the terminal their runs' statuses stand for, before they are recorded."""
    if p.ctx.service.adapter.stream_end != "status":
        return
    with trio.move_on_after(p.bound_s):
        async with trio.open_nursery() as nursery:
            for racer in racers:
                if racer.response.status == 200:
                    nursery.start_soon(settle_terminal, p.ctx.service, racer)


@step("drain")
async def drain(p: Program, call: Step) -> None:
    st = p.state
    await release_provider(p, call)
    with trio.move_on_after(p.ctx.config.drain_timeout_s):
        for i, racer in enumerate(st.racers):
            if i not in st.failed and i not in st.recorded:
                await racer.finished.wait()
        if st.holder is not None:
            await st.holder.finished.wait()
    await settle_terminals(p, [r for i, r in enumerate(st.racers)
                               if i not in st.failed and i not in st.recorded]
                           + ([st.holder] if st.holder is not None else []))
    for i in range(len(st.racers)):
        p.record_racer(i)
    if st.holder is not None and st.holder.response.status is not None \
            and not st.holder_recorded:
        st.holder_recorded = True
        p.rec.add("ok", "turn", P_HOLDER, p.ctx.nonce("holder"),
                  {"sent_ns": st.holder.sent_ns, **st.holder.response.summary()})
