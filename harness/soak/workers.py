"""The soak's closed-loop workers and their actions.

Each worker picks its next action with its own seeded RNG (its first action is fixed, so even
a short soak covers every kind) and keeps a small pool of idle chats to reuse. The RNG is
drawn in the same order for the same seed, so a seed replays the same choices.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from raceharness.net.http1 import Racer
from raceharness.soak.load import Load, Req, disconnect, run_id_of
from raceharness.soak.plan import (
    ACTIONS,
    BURST_SIZES,
    DISTINCT_SIZES,
    ERROR_MODES,
    NEW_CHAT_P,
    POOL_MAX,
    TURNS_PER_CHAT,
    WEIGHTS,
)

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, load: Load, w: int) -> None:
        self.load = load
        self.w = w
        self.rng = random.Random(f"{load.plan.seed}:worker:{w}")
        self.pool: list[str] = []        # idle chats
        self.uses: Counter[str] = Counter()

    async def run(self) -> None:
        first = True
        while trio.current_time() < self.load.deadline:
            action = (ACTIONS[self.w % len(ACTIONS)] if first
                      else self.rng.choices(ACTIONS, WEIGHTS)[0])
            first = False
            try:
                await getattr(self, "do_" + action.replace("-", "_"))()
            except Exception as exc:  # noqa: BLE001 - our bug: count it, keep the load going
                log.exception("soak worker %d: %s failed", self.w, action)
                self.load.tally.crash(f"worker {self.w} {action}: {type(exc).__name__}: {exc}")

    # -- chats --------------------------------------------------------------------------------

    def _take_chat(self, new_p: float) -> str | None:
        if not self.pool or self.rng.random() < new_p:
            return None
        return self.pool.pop(self.rng.randrange(len(self.pool)))

    def _give_back(self, chat: str | None, reqs: list[Req]) -> None:
        if chat is None or not all(r.clean() for r in reqs):
            return
        self.uses[chat] += sum(1 for r in reqs if r.status == 200)
        if self.uses[chat] >= TURNS_PER_CHAT:
            return
        self.pool.append(chat)
        if len(self.pool) > POOL_MAX:
            self.pool.pop(0)

    # -- actions ------------------------------------------------------------------------------

    async def _single(self, action: str, mode: str,
                      middle: Callable[[Req, Racer], Awaitable[None]] | None = None) -> Req:
        """One turn on an idle or a new chat; ``middle(req, racer)`` once its status is in."""
        chat = self._take_chat(NEW_CHAT_P)
        req = self.load.new_req(action, await self.load.instance(self.rng), chat, mode)

        async def mid(live: list[tuple[Req, Racer]]) -> None:
            if live and middle is not None:
                await middle(*live[0])

        await self.load.group([req], "whole", mid)
        self._give_back(chat or req.chat_out, [req])
        return req

    async def do_turn(self) -> None:
        await self._single("turn", "finish")

    async def do_provider_error(self) -> None:
        await self._single("provider-error", self.rng.choice(ERROR_MODES))

    async def do_stop(self) -> None:
        async def stop(req: Req, racer: Racer) -> None:
            if run_id_of(racer) is None:
                return
            await self.load.wait_called(req)
            if not await self.load.stop(self.rng, run_id_of(racer)):
                self.load.provider.release(req.nonce)

        await self._single("stop", "hold", stop)

    async def do_disconnect(self) -> None:
        point = self.rng.choice(("start", "token"))

        async def drop(req: Req, racer: Racer) -> None:
            if racer.response.status != 200:
                return
            if point == "token":
                await self.load.wait_called(req)
            await disconnect(req, racer)

        await self._single("disconnect", "hold", drop)

    async def do_distinct(self) -> None:
        load = self.load
        reqs = [load.new_req("distinct", await load.instance(self.rng), None, "finish")
                for _ in range(self.rng.randint(*DISTINCT_SIZES))]
        await load.group(reqs, "whole")
        for req in reqs:
            self._give_back(req.chat_out, [req])

    async def do_burst(self) -> None:
        load, rng = self.load, self.rng
        chat = self._take_chat(0.0)
        if chat is None:
            setup = load.new_req("setup", await load.instance(rng), None, "finish")
            await load.group([setup], "whole")
            if not setup.clean() or setup.chat_out is None:
                return
            chat = setup.chat_out
        n = rng.randint(*BURST_SIZES)
        sync = rng.choice(("last-byte", "whole"))
        end = rng.choices(("release", "stop", "disconnect"), (6, 3, 1))[0]
        reqs = [load.new_req("burst", await load.instance(rng), chat, "hold") for _ in range(n)]
        info: dict[str, Any] = {"n": n, "sync": sync, "end": end,
                                "instances": {r.instance for r in reqs},
                                "from_s": trio.current_time() - load.t0}

        async def end_winners(live: list[tuple[Req, Racer]]) -> None:
            winners = [(req, r) for req, r in live if r.response.status == 200]
            info["winners"] = len(winners)
            for req, racer in winners:
                run_id = run_id_of(racer)
                if end == "release" or run_id is None:
                    load.provider.release(req.nonce)
                    continue
                await load.wait_called(req)
                if end == "stop":
                    if not await load.stop(rng, run_id):
                        load.provider.release(req.nonce)
                else:
                    await disconnect(req, racer)

        await load.group(reqs, sync, end_winners)
        info["to_s"] = trio.current_time() - load.t0
        info["conflicts"] = sum(1 for r in reqs if r.status == 409)
        info["unanswered"] = sum(1 for r in reqs if r.status is None and not r.disconnected)
        load.tally.bursts.append(info)
        self._give_back(chat, reqs)
