"""A long hold, the service's own clocks (heartbeat, lease, reaper) running: hold-past and
late-turns."""

from __future__ import annotations

import time

import trio

from raceharness.core.scenario import Step
from raceharness.net.http1 import release_last_bytes
from raceharness.trial.context import race_text
from raceharness.trial.steps.base import Program, StepNotAvailable, step
from raceharness.trial.steps.burst import await_answers, prepare, record_invokes, send_whole


def hold_past_s(settings: dict[str, float], intervals: int) -> float:
    """hold-past's wait: ``intervals`` heartbeats, and at least the lease plus two heartbeats."""
    heartbeat, lease = settings["heartbeat_s"], settings["lease_s"]
    return max(intervals * heartbeat, lease + 2 * heartbeat)


@step("hold-past")
async def hold_past(p: Program, call: Step) -> None:
    """Keep the winner held while the service's heartbeat renews its lease several times
    and the lease itself runs out once over: a lease that is not renewed, or is written
    shorter than the heartbeat, has then expired, and a reaper has had its turn. The wait
    is the point of the step (the service's clock must move), not a synchronisation."""
    settings = p.ctx.settings
    if "heartbeat_s" not in settings or "lease_s" not in settings:
        raise StepNotAvailable("hold-past: needs the service's heartbeat interval and lease "
                               "(--heartbeat S and --lease S)")
    hold = hold_past_s(settings, call.arg("intervals"))
    p.meta["held_s"] = round(hold, 3)
    await trio.sleep(hold)


@step("late-turns")
async def late_turns(p: Program, call: Step) -> None:
    """While the winner is still held: more turns one after another, at ``singles`` phases
    a fraction of the service's heartbeat apart, one to each instance at each phase (so
    they meet its lease at different points of its renewal, on an instance that does not
    own the run too: a lease written shorter than the heartbeat is expired at most of
    them), then a burst of ``n``. All are recorded as racers: the same properties judge
    them (each must get 409 naming the holder, and none may win)."""
    ctx, st = p.ctx, p.state
    if st.chat_id is None:
        raise StepNotAvailable("late-turns: no chat yet")
    n, phases = call.arg("n", ctx.config.n), max(1, call.arg("singles"))
    gap_s = ctx.settings.get("heartbeat_s", 0.3) / phases
    instances = len(ctx.targets)
    singles = phases * instances  # at each phase, one turn to every instance
    base = len(st.racers)
    nonces = [ctx.nonce(f"late{k}") for k in range(singles + n)]
    p.provider_modes({nonce: "hold" for nonce in nonces})
    late = [ctx.racer(race_text(nonce, "racer"), st.chat_id, instance=k % instances)
            for k, nonce in enumerate(nonces)]  # late[k - base] is racer k
    st.racers += late
    st.nonces += nonces
    for k in range(base, base + singles):
        if k > base and (k - base) % instances == 0:
            await trio.sleep(gap_s)  # the next phase of the heartbeat, by design
        racer = late[k - base]
        try:
            with trio.fail_after(ctx.config.connect_timeout_s):
                await racer.connect()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            st.failed[k] = f"{type(exc).__name__}: {exc}"
        else:
            st.readers.start_soon(racer.read_response)
            await send_whole(racer)
            with trio.move_on_after(p.bound_s):
                await racer.answered.wait()
        record_invokes(p, [k], lambda _: st.chat_id, racer.sent_ns or time.monotonic_ns())
    burst = list(range(base + singles, base + singles + n))
    async with trio.open_nursery() as nursery:
        for k in burst:
            nursery.start_soon(prepare, p, k, late[k - base], True)
    live = [k for k in burst if k not in st.failed]
    for k in live:
        st.readers.start_soon(st.racers[k].read_response)
    await trio.sleep(ctx.config.settle_ms / 1000)  # let the server take every prefix
    release_ns, _ = await release_last_bytes([late[k - base] for k in live])
    record_invokes(p, burst, lambda _: st.chat_id, release_ns)
    await await_answers(p, live, release_ns)

