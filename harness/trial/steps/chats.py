"""Steps making chats and whole turns: new-chat, new-chats, hold-turn, released-turn."""

from __future__ import annotations

from typing import Any

import trio

from raceharness.core.scenario import Step
from raceharness.trial.context import TargetUnreachable, race_text, whole_turn
from raceharness.trial.steps.base import P_HOLDER, P_RELEASED, P_SETUP, Program, step


@step("new-chat")
async def new_chat(p: Program, call: Step) -> None:
    if p.scenario.reuse_chat and "chat_id" in p.shared:
        p.state.chat_id = p.shared["chat_id"]
        return
    if p.ctx.config.chat_id is not None:
        p.state.chat_id = p.ctx.config.chat_id
        return
    setup = await whole_turn(p.ctx, p.rec, P_SETUP, "setup", None, p.bound_s)
    if setup.get("status") != 200 or not setup.get("chat_id"):
        raise TargetUnreachable(setup_problem(setup))
    p.state.chat_id = p.shared["chat_id"] = setup["chat_id"]
    p.state.previous_run_id = setup.get("run_id")


@step("new-chats")
async def new_chats(p: Program, call: Step) -> None:
    n = call.arg("n", p.ctx.config.n)
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    async def one(i: int) -> None:
        results[i] = await whole_turn(p.ctx, p.rec, P_SETUP + 1 + i, f"setup{i}", None,
                                      p.bound_s)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    for result in results:
        if result.get("status") != 200 or not result.get("chat_id"):
            raise TargetUnreachable(setup_problem(result))
    p.state.chats = [r["chat_id"] for r in results]


@step("hold-turn")
async def hold_turn(p: Program, call: Step) -> None:
    """A turn that holds the chat (the provider holds it after one token)."""
    nonce = p.ctx.nonce("holder")
    p.provider_modes({nonce: "hold"})
    holder = p.ctx.racer(race_text(nonce, "holder"), p.state.chat_id)
    p.rec.add("invoke", "turn", P_HOLDER, nonce, {"role": "holder", "chat_id": p.state.chat_id})
    with trio.fail_after(p.bound_s):
        await holder.connect()
        await holder.send_whole()
        p.state.readers.start_soon(holder.read_response)
        await holder.answered.wait()
    p.state.holder = holder


@step("released-turn")
async def released_turn(p: Program, call: Step) -> None:
    await whole_turn(p.ctx, p.rec, P_RELEASED, "released", p.state.chat_id, p.bound_s)


def setup_problem(setup: dict[str, Any]) -> str:
    status = setup.get("status")
    if status is None:
        return f"the set-up turn got no answer ({setup.get('error', 'no response')})"
    if status in (401, 403):
        return f"the set-up turn was refused with {status}: check --token"
    return f"the set-up turn answered {status}, not a 200 stream with a chatId"
