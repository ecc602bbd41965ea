"""The burst: N turns released together (HTTP/1.1 last byte, naive, or HTTP/2 single packet),
its answers awaited (cut short once race/losers-fast is settled), and the winner chosen."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import trio

from raceharness.core.protocol import pick_winner
from raceharness.core.scenario import Step
from raceharness.net.http1 import Racer, release_last_bytes
from raceharness.net.http2 import Http2Unavailable, open_h2_burst
from raceharness.net.race_request import RaceRequest
from raceharness.trial.context import losers_fast_bound_ms, race_text
from raceharness.trial.steps.base import (
    Program,
    StepNotAvailable,
    log,
    step,
    stream_attr,
    winners,
)

H2_SYNC = "h2-single-packet"


@step("burst")
async def burst(p: Program, call: Step) -> None:
    ctx, st, cfg = p.ctx, p.state, p.ctx.config
    n = call.arg("n", cfg.n)
    sync = call.arg("sync", cfg.sync)
    release = call.arg("release")
    delays_ms: tuple[int, ...] = call.arg("delays_ms")
    distinct = call.arg("chats") == "distinct"
    per_chat = max(1, call.arg("per-chat"))  # racers on each distinct chat
    if distinct and len(st.chats) * per_chat < n:
        raise StepNotAvailable(f"burst: chats='distinct' needs {-(-n // per_chat)} chats "
                               f"from new-chats")
    st.nonces = [ctx.nonce(f"r{i}") for i in range(n)]
    p.provider_modes({nonce: call.arg("provider") for nonce in st.nonces})
    racer_chats = [st.chats[i // per_chat] if distinct else st.chat_id for i in range(n)]
    h1 = [ctx.racer(race_text(st.nonces[i], "racer"), racer_chats[i],
                    instance=i % len(ctx.targets)) for i in range(n)]
    st.racers = list(h1)
    p.meta.update(n=n, sync=sync, release=release)
    st.h2 = []
    if sync == H2_SYNC and not await _open_h2(p, racer_chats):
        sync = "last-byte"  # the target does not speak HTTP/2: said in the log and meta
    if not st.h2:
        async with trio.open_nursery() as nursery:
            for i, racer in enumerate(h1):
                nursery.start_soon(prepare, p, i, racer,
                                   sync == "last-byte" and release != "after-first-start")
    live = [i for i in range(n) if i not in st.failed]
    release_ns = await _release(p, sync, release, live, delays_ms, h1)
    p.meta["release_ns"] = release_ns
    sent = [ns for i in live if (ns := st.racers[i].sent_ns) is not None]
    p.meta["send_spread_ns"] = (max(sent) - min(sent)) if sent else None
    record_invokes(p, range(n), racer_chats.__getitem__, release_ns)
    await await_answers(p, live, release_ns)
    st.winner = _first_winner(st.racers)
    if st.winner is not None and p.ctx.provider is not None:
        # The start frame comes before the provider call (protocol §2.7): wait, bounded,
        # until the winner's call has arrived, so a stop never lands before it. A service
        # that never calls is caught by race/winner-provider-call.
        # With several winners (a broken gate) a call is known by the nonce of the last
        # user message in the history it forwards, which may be another winner's: then
        # wait for as many calls as winners instead.
        provider, nonce = p.ctx.provider, st.nonces[st.winner]
        won = {st.nonces[i] for i in winners(st.racers)}

        def called() -> bool:
            return bool(provider.calls_for(nonce)) or len(won) > 1 and sum(
                c.nonce in won for c in provider.calls) >= len(won)

        with trio.move_on_after(p.ctx.config.provider_call_bound_s):
            await provider.wait_for(called)


def record_invokes(p: Program, indices: Iterable[int], chat_of: Callable[[int], str | None],
                   release_ns: int) -> None:
    """The racers' invokes, at their last byte's send time (a racer that never connected: an
    invoke at the release and its fail)."""
    st = p.state
    for i in indices:
        if i in st.failed:
            p.rec.add("invoke", "turn", i, st.nonces[i],
                      {"role": "racer", "chat_id": chat_of(i)}, time_ns=release_ns)
            p.rec.add("fail", "turn", i, st.nonces[i], {"error": st.failed[i]})
            continue
        sent = st.racers[i].sent_ns
        p.rec.add("invoke", "turn", i, st.nonces[i],
                  {"role": "racer", "chat_id": chat_of(i), "sent_ns": sent},
                  time_ns=sent or release_ns)


async def await_answers(p: Program, live: list[int], release_ns: int) -> None:
    """Until every racer in ``live`` has its answer, within the answer bound — or, when the
    scenario judges race/losers-fast, until its bound has passed and a winner is known: a
    loser unanswered then is a violation whatever it gets later, so waiting on cannot
    change the trial's verdict, and a service that holds its claims open would cost the
    whole answer bound on every trial. Late answers are still read (until drain)."""
    st = p.state
    racers = [st.racers[i] for i in live]
    full = trio.current_time() + p.bound_s
    if "race/losers-fast" in p.scenario.properties:
        last_sent = max((r.sent_ns or release_ns for r in racers), default=release_ns)
        cut_ns = last_sent + int((losers_fast_bound_ms(p.ctx.config) + 250) * 1e6)
        with trio.move_on_at(trio.current_time() + (cut_ns - time.monotonic_ns()) / 1e9):
            for racer in racers:
                await racer.answered.wait()
        with trio.move_on_at(full):
            for racer in racers:
                if winners(st.racers) and not racer.answered.is_set():
                    cut_ms = round((time.monotonic_ns() - last_sent) / 1e6)
                    late = sum(not r.answered.is_set() for r in racers)
                    p.meta["answers_cut_ms"] = cut_ms
                    p.decided = (f"race/losers-fast: {late} racer(s) still unanswered "
                                 f"{cut_ms} ms after the last was sent, past the "
                                 f"{losers_fast_bound_ms(p.ctx.config):g} ms bound")
                    return
                await racer.answered.wait()
        return
    with trio.move_on_at(full):
        for racer in racers:
            await racer.answered.wait()


async def prepare(p: Program, i: int, racer: Racer, withhold: bool) -> None:
    """Connect racer ``i`` and, with ``withhold``, send all of its request but the last byte;
    a failure marks it failed."""
    try:
        with trio.fail_after(p.ctx.config.connect_timeout_s):
            await racer.connect()
            if withhold:
                await racer.send_prefix()
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        p.state.failed[i] = f"{type(exc).__name__}: {exc}"


async def _open_h2(p: Program, racer_chats: list[str | None]) -> bool:
    """Replace the racers by HTTP/2 streams, one burst per instance, every request but its
    final byte sent. False (nothing left open) when the target does not speak HTTP/2."""
    ctx, st = p.ctx, p.state
    by_instance: dict[int, list[int]] = {}
    for i in range(len(st.racers)):
        by_instance.setdefault(i % len(ctx.targets), []).append(i)
    racers: list[RaceRequest] = list(st.racers)
    for k, indices in by_instance.items():
        requests = [ctx.turn_request(race_text(st.nonces[i], "racer"), racer_chats[i], k)
                    for i in indices]
        try:
            h2 = await open_h2_burst(ctx.targets[k].endpoint(), requests, nursery=st.readers,
                                     connect_timeout_s=ctx.config.connect_timeout_s)
        except Http2Unavailable as exc:
            note = f"HTTP/2 unavailable ({exc.why}): fell back to --sync last-byte"
            log.warning("%s for this burst", note)
            p.meta["h2_note"] = note
            p.meta["sync_used"] = "last-byte"
            for opened in st.h2:
                await opened.aclose()
            st.h2 = []
            return False
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            for i in indices:
                st.failed[i] = f"{type(exc).__name__}: {exc}"
            continue
        st.h2.append(h2)
        for i, stream in zip(indices, h2.racers, strict=True):
            stream.chat_id = racer_chats[i]
            racers[i] = stream
        if h2.note:
            log.info("h2-single-packet: %s", h2.note)
            p.meta["h2_note"] = h2.note
    st.racers = racers
    p.meta["sync_used"] = H2_SYNC
    return True


async def _release_h2(p: Program, release: str, racers: list[RaceRequest]) -> int:
    st = p.state
    if release == "after-first-start":
        h2, first = next((b, s) for b in st.h2 for s in b.racers if s is racers[0])
        release_ns, _ = await h2.release([first])
        with trio.move_on_after(p.bound_s):
            await first.answered.wait()
        for b in st.h2:
            await b.release()
        return release_ns
    await trio.sleep(p.ctx.config.settle_ms / 1000)  # let the server take every prefix
    if release == "when-holder-stopped":
        await _stop_holder_for_release(p)
    release_ns = time.monotonic_ns()
    for b in st.h2:
        await b.release()
    p.meta["h2_packets"] = sum(b.packets or 0 for b in st.h2)
    return release_ns


async def _stop_holder_for_release(p: Program) -> None:
    holder = p.state.holder
    run_id = None if holder is None or holder.response.stream is None else (
        holder.response.stream.run_id)
    if run_id is None:
        raise StepNotAvailable("burst: release='when-holder-stopped' needs hold-turn")
    await p.stop_run(run_id, "holder")


async def _release(p: Program, sync: str, release: str, live: list[int],
                   delays_ms: tuple[int, ...], h1: list[Racer]) -> int:
    """Release the racers in ``live``: the HTTP/2 streams when the burst opened them, else
    ``h1``'s HTTP/1.1 racers as ``sync`` says."""
    st = p.state
    for i in live:
        st.readers.start_soon(st.racers[i].read_response)
    if st.h2:
        return await _release_h2(p, release, [st.racers[i] for i in live])
    racers = [h1[i] for i in live]
    if release == "after-first-start":
        release_ns = time.monotonic_ns()
        await send_whole(racers[0])
        with trio.move_on_after(p.bound_s):
            await racers[0].answered.wait()
        delays = delays_ms or (0,)  # each later turn this long after the answer
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
                senders.start_soon(send_whole, racer)
        return release_ns
    await trio.sleep(p.ctx.config.settle_ms / 1000)  # let the server take every prefix
    if release == "when-holder-stopped":
        await _stop_holder_for_release(p)
    release_ns, _ = await release_last_bytes(racers)
    return release_ns


async def send_whole(racer: Racer) -> None:
    """Send the racer's whole request; a failed send is its (error) answer."""
    try:
        await racer.send_whole()
    except (OSError, trio.BrokenResourceError) as exc:
        racer.response.error = f"send failed: {type(exc).__name__}"
        racer.answered.set()
        racer.finished.set()


async def _send_whole_at(racer: Racer, deadline: float) -> None:
    await trio.sleep_until(deadline)  # a planned send time, not a wait for a condition
    await send_whole(racer)


def _first_winner(racers: Sequence[RaceRequest]) -> int | None:
    """protocol.pick_winner over the racers answered 200 (the checkers' rule, live)."""
    return pick_winner(winners(racers), won=lambda i: True,
                       tracked=lambda i: bool(stream_attr(racers[i], "run_id")),
                       order=lambda i: (racers[i].response.headers_ns or 0, i))
