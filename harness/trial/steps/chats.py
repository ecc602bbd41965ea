"""Steps making chats and whole turns: new-chat, new-chats, hold-turn, released-turn, and a
create-on-first-turn race's fresh-chat-id and count-chats."""

from __future__ import annotations

import random
import uuid
from typing import Any

import httpx
import trio

from raceharness.adapters.base import AdapterError
from raceharness.core.scenario import Step
from raceharness.trial.context import TargetUnreachable, race_text, whole_turn
from raceharness.trial.steps.base import (
    P_HOLDER,
    P_RELEASED,
    P_SETUP,
    Program,
    StepNotAvailable,
    step,
)


@step("new-chat")
async def new_chat(p: Program, call: Step) -> None:
    if p.scenario.reuse_chat and "chat_id" in p.shared:
        p.state.chat_id = p.shared["chat_id"]
        return
    if p.ctx.config.chat_id is not None:
        p.state.chat_id = p.ctx.config.chat_id
        return
    if not p.ctx.service.adapter.creates_chat_by_turn:  # the chat first, then its first turn
        chat_id = await create_chat(p, P_SETUP)
        setup = await whole_turn(p.ctx, p.rec, P_SETUP, "setup", chat_id, p.bound_s)
        if setup.get("status") != 200:
            raise TargetUnreachable(setup_problem(setup))
        p.state.chat_id = p.shared["chat_id"] = chat_id
        p.state.previous_run_id = setup.get("run_id")
        return
    setup = await whole_turn(p.ctx, p.rec, P_SETUP, "setup", None, p.bound_s)
    if setup.get("status") != 200 or not setup.get("chat_id"):
        raise TargetUnreachable(setup_problem(setup))
    p.state.chat_id = p.shared["chat_id"] = setup["chat_id"]
    p.state.previous_run_id = setup.get("run_id")


async def create_chat(p: Program, process: int) -> str:
    """A chat made through the adapter's own route (recorded as a ``chat`` op)."""
    p.rec.add("invoke", "chat", process, None, {"role": "create"})
    try:
        with trio.fail_after(p.bound_s):
            status, chat_id = await p.ctx.service.create_chat()
    except (OSError, trio.TooSlowError, httpx.HTTPError) as exc:
        p.rec.add("info", "chat", process, None, {"error": type(exc).__name__})
        raise TargetUnreachable(f"creating a chat failed: {type(exc).__name__}: {exc}") from None
    p.rec.add("ok", "chat", process, None, {"status": status, "chat_id": chat_id})
    if chat_id is None:
        raise TargetUnreachable(f"creating a chat was answered {status}, not a chat")
    return chat_id


@step("fresh-chat-id")
async def fresh_chat_id(p: Program, call: Step) -> None:
    """A chat id nobody made yet (a UUID): the burst's turns race to create the chat."""
    if not p.ctx.service.adapter.client_chat_ids:
        raise StepNotAvailable(f"fresh-chat-id: adapter {p.ctx.service.adapter.name} has "
                               "no client-chosen chat ids (a turn cannot create its chat)")
    p.state.chat_id = str(uuid.UUID(int=random.Random(p.ctx.seed).getrandbits(128), version=4))


@step("count-chats")
async def count_chats(p: Program, call: Step) -> None:
    """How many chat records the target holds under the trial's chat id (a ``chats`` op)."""
    chat_id = p.state.chat_id
    if chat_id is None:
        raise StepNotAvailable("count-chats: no chat yet")
    p.rec.add("invoke", "chats", P_RELEASED, None, {"chat_id": chat_id})
    try:
        with trio.fail_after(p.bound_s):
            status, count = await p.ctx.service.count_chats(chat_id)
    except AdapterError:
        raise
    except Exception as exc:  # noqa: BLE001 - the target's failure is a finding
        p.rec.add("info", "chats", P_RELEASED, None, {"error": type(exc).__name__})
        return
    p.rec.add("ok", "chats", P_RELEASED, None, {"status": status, "count": count})


@step("new-chats")
async def new_chats(p: Program, call: Step) -> None:
    n = call.arg("n", p.ctx.config.n)
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    async def one(i: int) -> None:
        chat_id = None
        if not p.ctx.service.adapter.creates_chat_by_turn:
            chat_id = await create_chat(p, P_SETUP + 1 + i)
        results[i] = await whole_turn(p.ctx, p.rec, P_SETUP + 1 + i, f"setup{i}", chat_id,
                                      p.bound_s)
        if chat_id is not None:  # a chat in the path: its stream need not name it
            results[i]["chat_id"] = results[i].get("chat_id") or chat_id

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
