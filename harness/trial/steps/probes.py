"""Probes the service must refuse or ignore: a stale stop, another user's requests, bad
input."""

from __future__ import annotations

import json
from typing import Any

import trio

from raceharness.adapters.aichat import AiChatAdapter
from raceharness.core.scenario import Step
from raceharness.core.steps import Phase
from raceharness.trial.context import race_text, turn_body
from raceharness.trial.steps.base import P_PROBE, Program, StepNotAvailable, step
from raceharness.trial.steps.observe import observe


def _observe(phase: Phase) -> Step:
    return Step("observe", {"phase": phase.value})


@step("stale-stop")
async def stale_stop(p: Program, call: Step) -> None:
    """``/stop`` aimed at the chat's previous (ended) run while a newer run is live."""
    if p.state.previous_run_id is None:
        raise StepNotAvailable("stale-stop: no ended run to aim at (new-chat makes one)")
    await observe(p, _observe(Phase.BEFORE_STALE))
    await p.stop_run(p.state.previous_run_id, "stale")
    await observe(p, _observe(Phase.AFTER_STALE))


@step("foreign-user")
async def foreign_user(p: Program, call: Step) -> None:
    other = p.ctx.target.other_token
    chat_id, run_id = p.state.chat_id, p.state.winner_run_id()
    if other is None or chat_id is None:
        raise StepNotAvailable("foreign-user: needs --other-token and a chat")
    _protocol_only(p, "foreign-user")
    paths = p.ctx.target.profile.paths
    nonce = p.ctx.nonce("foreign")
    await observe(p, _observe(Phase.BEFORE_FOREIGN))
    probes: list[tuple[str, str, dict[str, Any]]] = [
        ("stream", paths.stream, {"content": turn_body(race_text(nonce, "foreign"), chat_id),
                                  "headers": {"content-type": "application/json"}}),
        ("stop-run", paths.stop, {"json": {"runId": run_id}}),
        ("stop-chat", paths.stop, {"json": {"chatId": chat_id}}),
        ("run", paths.run, {"json": {"chatId": chat_id}}),
    ]
    for k, (label, path, kwargs) in enumerate(probes):
        tag = nonce if label == "stream" else None  # its provider call would carry it
        p.rec.add("invoke", "probe", P_PROBE + k, tag,
                  {"role": "foreign", "label": label, "expect_status": 403})
        status = await _probe(p, "POST", path, other, **kwargs)
        p.rec.add("ok" if status else "info", "probe", P_PROBE + k, tag, {"status": status})
    if paths.runs:
        k = len(probes)
        p.rec.add("invoke", "probe", P_PROBE + k, None,
                  {"role": "foreign", "label": "runs", "expect_status": 403})
        status = await _probe(p, "GET", paths.runs, other, params={"chatId": chat_id})
        p.rec.add("ok" if status else "info", "probe", P_PROBE + k, None, {"status": status})
    await observe(p, _observe(Phase.AFTER_FOREIGN))


@step("bad-inputs")
async def bad_inputs(p: Program, call: Step) -> None:
    _protocol_only(p, "bad-inputs")
    chat_id = p.state.chat_id
    nonce = p.ctx.nonce("bad")
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
    paths = p.ctx.target.profile.paths
    for k, (label, body, expect, auth) in enumerate(cases):
        p.rec.add("invoke", "probe", P_PROBE + k, nonce,
                  {"role": "bad-input", "label": label, "expect_status": expect})
        status = await _probe(p, "POST", paths.stream, None, authenticated=auth,
                              content=body, headers={"content-type": "application/json"})
        p.rec.add("ok" if status else "info", "probe", P_PROBE + k, nonce, {"status": status})


def _protocol_only(p: Program, name: str) -> None:
    """The probes are protocol.md's request shapes: other adapters have no such routes."""
    if not isinstance(p.ctx.service.adapter, AiChatAdapter):
        raise StepNotAvailable(f"{name}: its probes are protocol.md's requests; adapter "
                               f"{p.ctx.service.adapter.name} speaks another wire")


async def _probe(p: Program, method: str, path: str, token: str | None, **kwargs: Any) -> int:
    try:
        with trio.fail_after(p.bound_s):
            return await p.ctx.service.raw(method, path, token, **kwargs)
    except Exception:  # noqa: BLE001 - no answer is recorded as status 0 (info)
        return 0
