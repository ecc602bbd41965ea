"""The ``ai-chat`` adapter: this project's protocol (docs/protocol.md), the default.

Its routes are the profile's ``[paths]`` (protocol.md's by default), its conflict answer the
profile's ``[conflict]``. A chat is created by its first turn (no ``chatId``); the run id and
chat id come in the ``start`` frame; a stream ends with one terminal frame and ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from raceharness.adapters.base import Adapter, Conflict, StreamReader, holder_lacks
from raceharness.core.ui_stream import UiStream

RUNS_PAGE_LIMIT = 200  # the largest /runs page protocol.md §4 allows


class AiChatAdapter(Adapter):
    name = "ai-chat"
    stream_end = "frame"
    creates_chat_by_turn = True

    def __init__(self, paths: Any, conflict: Conflict, *, name: str = "ai-chat") -> None:
        self.paths = paths  # net.target.Paths: stream, stop, run, runs, health
        self.conflict = conflict
        self.name = name
        self.lacks = holder_lacks(conflict)

    def turn_request(self, text: str, chat_id: str | None
                     ) -> tuple[str, str, list[tuple[str, str]], bytes]:
        body: dict[str, Any] = {"messages": [
            {"id": "msg-1", "role": "user", "parts": [{"type": "text", "text": text}]}]}
        if chat_id is not None:
            body["chatId"] = chat_id
        return ("POST", self.paths.stream, [("accept", "text/event-stream")],
                json.dumps(body, separators=(",", ":")).encode())

    def new_stream(self, chat_id: str | None, headers: Mapping[str, str]) -> StreamReader:
        return UiStream()

    async def stop(self, client: httpx.AsyncClient, headers: dict[str, str], *,
                   run_id: str | None, chat_id: str | None) -> tuple[int, bool | None]:
        # protocol.md §4: a run by its id, else the chat's active run
        body = {"runId": run_id} if run_id else {"chatId": chat_id} if chat_id else {}
        resp = await client.post(self.paths.stop, json=body, headers=headers)
        stopped = _data(resp).get("stopped") if resp.status_code == 200 else None
        return resp.status_code, stopped if isinstance(stopped, bool) else None

    def has_runs(self) -> bool:
        return bool(self.paths.runs)

    async def runs_page(self, client: httpx.AsyncClient, headers: dict[str, str], chat_id: str,
                        status: str | None = None
                        ) -> tuple[int, list[dict[str, Any]] | None, bool]:
        """``/runs`` (newest first, the largest page the protocol allows); ``truncated`` when
        the service said more pages follow (``nextCursor``), so a run missing from the list
        is not evidence it does not exist."""
        if not self.paths.runs:
            return 0, None, False
        params = {"chatId": chat_id, "limit": str(RUNS_PAGE_LIMIT),
                  **({"status": status} if status else {})}
        resp = await client.get(self.paths.runs, params=params, headers=headers)
        if resp.status_code != 200:
            return resp.status_code, None, False
        data = _data(resp)
        items = data.get("items")
        if not isinstance(items, list):
            return resp.status_code, None, False
        return resp.status_code, [{"id": i.get("id"), "status": i.get("status")}
                                  for i in items if isinstance(i, dict)], bool(
                                      data.get("nextCursor"))

    async def latest(self, client: httpx.AsyncClient, headers: dict[str, str], chat_id: str
                     ) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        resp = await client.post(self.paths.run, json={"chatId": chat_id}, headers=headers)
        if resp.status_code != 200:
            return resp.status_code, None, None
        data = _data(resp)
        run, message = data.get("run"), data.get("message")
        return (resp.status_code, run if isinstance(run, dict) else None,
                message if isinstance(message, dict) else None)

    async def health(self, client: httpx.AsyncClient) -> int:
        resp = await client.get(self.paths.health)
        return resp.status_code


def _data(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        return body["data"]  # type: ignore[no-any-return]
    return body if isinstance(body, dict) else {}
