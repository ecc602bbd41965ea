"""Adapters declared in a profile (profile v2): a server of the same family described without
code. LangGraph's built-in adapter is one of these (``langgraph.toml`` beside this module).

A v2 profile has ``adapter = "template"`` (or names a built-in to start from, e.g.
``adapter = "langgraph"``, and overrides some of its fields) and these sections; routes are
``"METHOD /path"`` templates with ``{chat_id}`` and ``{run_id}``; bodies are JSON templates
whose string values may hold ``{text}`` (the turn's text, carrying the race nonce) and
``{chat_id}``; ids are read with JSON pointers (RFC 6901, ``""`` the whole document)::

    adapter = "template"
    name = "my-server"
    provides = ["disconnect-stops"]       # capabilities the server has (core.scenario)

    [routes]
    turn = "POST /threads/{chat_id}/runs/stream"
    create_chat = "POST /threads"         # "" : the first turn creates the chat
    stop_run = "POST /threads/{chat_id}/runs/{run_id}/cancel"
    stop_chat = ""                        # "" : each active run listed is stopped
    runs = "GET /threads/{chat_id}/runs?limit=200"
    find_chats = "POST /threads/search"   # "" : chat records cannot be counted
    health = "GET /ok"

    [bodies]
    turn = '{"input": {"messages": [{"role": "user", "content": "{text}"}]}}'
    create_chat = "{}"
    find_chats = '{"ids": ["{chat_id}"]}'

    [stream]
    format = "run-events"                 # or "ui-message" (protocol.md §3)
    run_id_header = "content-location"    # a header naming the run ...
    run_id_pattern = "/runs/([^/?#]+)"    # ... read through this regex's first group
    run_id_event = "metadata"             # or an SSE event ...
    run_id_pointer = "/run_id"            # ... and the pointer into its data
    error_event = "error"                 # the event a failed run ends with
    end = "status"                        # "frame" (a terminal frame) or "status" (the run's)

    [chats]
    id = "/thread_id"                     # in create_chat's answer
    client_ids = true                     # a turn may create a chat of a client-chosen id
    found = ""                            # the list in find_chats' answer ...
    found_id = "/thread_id"               # ... and each record's id

    [runs]
    items = ""                            # the list in the runs answer
    id = "/run_id"
    status = "/status"
    next = ""                             # a pointer to a next-page cursor ("" none)

    [runs.statuses]                       # every status the server uses → the protocol's
    success = "succeeded"
    interrupted = "aborted"

    [conflict]
    status = 409
    code = ""                             # the JSON body's code ("" none)
    holder = ""                           # the field naming the holder's run ("" none)
    pattern = "already running"           # a regex the body must match ("" none)

    [not_checkable]                       # property → why this server gives no evidence
    "race/holder-named" = "its 409 names no holder"

``[auth]`` and ``[service]`` are as in every profile. Loading is strict: errors name the file,
the field and the value. A run status the map does not list, or an answer missing an id the
profile points at, stops the run with an :class:`~raceharness.adapters.base.AdapterError`
naming it (a server release that changed its wire fails loudly; it never passes silently).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from raceharness.adapters.base import (
    Adapter,
    AdapterError,
    Conflict,
    StreamReader,
    header_id,
    holder_lacks,
    pointer,
)
from raceharness.adapters.spec import (
    _PLACEHOLDER_RE,
    PROTOCOL_STATUSES,
    TEMPLATE_KEYS,
    TEMPLATE_SECTIONS,
    ProfileError,
    StreamSpec,
    TemplateSpec,
    parse_template,
)
from raceharness.core.protocol import ACTIVE_STATUSES
from raceharness.core.sse import Finding, Frame
from raceharness.core.ui_stream import UiStream

__all__ = ["TEMPLATE_KEYS", "TEMPLATE_SECTIONS", "ProfileError", "RunEventStream",
           "TemplateAdapter", "TemplateSpec", "fill", "fill_json", "parse_template"]


def fill(template: str, values: Mapping[str, str]) -> str:
    """A route template with ``{chat_id}``/``{run_id}`` replaced (URL-quoted)."""
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise AdapterError(f"route {template!r} needs {{{key}}}")
        return quote(values[key], safe="")
    return _PLACEHOLDER_RE.sub(one, template)


def fill_json(template: str, values: Mapping[str, str]) -> bytes:
    """A JSON body template with ``{text}``/``{chat_id}`` replaced inside its string values
    (the result is serialised again, so any text is escaped right)."""
    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), node)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        return node
    return json.dumps(walk(copy.deepcopy(json.loads(template))),
                      separators=(",", ":")).encode()


class RunEventStream:
    """A run-event stream (SSE events typed by ``event:``; LangGraph's): the run id from a
    header (known at once) or from an event; an error event ends a failed run; otherwise the
    stream just ends and the run's status says how."""

    def __init__(self, spec: StreamSpec, chat_id: str | None, header_run_id: str | None) -> None:
        self.spec = spec
        self.run_id = header_run_id
        self.chat_id = chat_id
        self.terminal: str | None = None
        self.done = False
        self.types: list[str] = []
        self.error_text: str | None = None
        self.findings: list[Finding] = []
        self.closed = False
        self._header_run_id = header_run_id

    @property
    def started(self) -> bool:
        return self.run_id is not None

    def on_frame(self, frame: Frame, offset: int) -> None:
        self.types.append(frame.type)
        data = (frame.data or {}).get("data")
        if self.spec.run_id_event and frame.type == self.spec.run_id_event:
            run_id = pointer(data, self.spec.run_id_pointer)
            if not isinstance(run_id, str) or not run_id:
                self.findings.append(Finding("start-missing-run-id", f"event {frame.type!r} "
                                             f"without a run id at {self.spec.run_id_pointer!r}",
                                             offset))
            elif self._header_run_id is not None and run_id != self._header_run_id:
                self.findings.append(Finding("run-id-mismatch", f"event {frame.type!r} names "
                                             f"run {run_id}, the header {self._header_run_id}",
                                             offset))
            elif self.run_id is None:
                self.run_id = run_id
        if frame.type == self.spec.error_event:
            self.terminal = "error"
            self.error_text = json.dumps(data)[:200] if data is not None else ""

    def close(self, end_offset: int | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.done = True


class TemplateAdapter(Adapter):
    """An adapter read from a :class:`TemplateSpec`."""

    def __init__(self, spec: TemplateSpec, conflict: Conflict) -> None:
        self.spec = spec
        self.name = spec.name
        self.conflict = conflict
        self.stream_end = "status" if spec.stream.end == "status" else "frame"
        self.creates_chat_by_turn = not spec.routes.create_chat
        self.client_chat_ids = spec.chats.client_ids
        self.provides = frozenset(spec.provides)
        self.lacks = holder_lacks(conflict, spec.not_checkable, spec.name)
        self._pattern = (re.compile(spec.stream.run_id_pattern)
                         if spec.stream.run_id_pattern else None)

    # -- the raced request ---------------------------------------------------------------

    def turn_request(self, text: str, chat_id: str | None
                     ) -> tuple[str, str, list[tuple[str, str]], bytes]:
        if chat_id is None:
            raise AdapterError(f"adapter {self.name}: a turn needs a chat id (the chat is "
                               "created first)")
        values = {"chat_id": chat_id, "text": text}
        method, path = self.spec.routes.turn.split(" ", 1)
        return (method, fill(path, values), [("accept", "text/event-stream")],
                fill_json(self.spec.bodies.turn, values))

    def event_typed(self) -> bool:
        return self.spec.stream.format == "run-events"

    def new_stream(self, chat_id: str | None, headers: Mapping[str, str]) -> StreamReader:
        if self.spec.stream.format == "ui-message":
            return UiStream()
        run_id = (header_id(headers, self.spec.stream.run_id_header, self._pattern)
                  if self.spec.stream.run_id_header else None)
        return RunEventStream(self.spec.stream, chat_id, run_id)

    # -- the other routes ------------------------------------------------------------------

    async def _call(self, client: httpx.AsyncClient, route: str, body: str,
                    headers: dict[str, str], values: Mapping[str, str]) -> httpx.Response:
        method, path = route.split(" ", 1)
        content = fill_json(body, values) if body else None
        extra = {"content-type": "application/json"} if content is not None else {}
        return await client.request(method, fill(path, values), content=content,
                                    headers={**headers, **extra})

    async def create_chat(self, client: httpx.AsyncClient, headers: dict[str, str]
                          ) -> tuple[int, str | None]:
        resp = await self._call(client, self.spec.routes.create_chat,
                                self.spec.bodies.create_chat, headers, {})
        if resp.status_code >= 300:
            return resp.status_code, None
        chat_id = pointer(_json(resp), self.spec.chats.id)
        if not isinstance(chat_id, str) or not chat_id:
            raise AdapterError(f"adapter {self.name}: the new chat's answer has no id at "
                               f"{self.spec.chats.id!r}: {resp.text[:200]!r}")
        return resp.status_code, chat_id

    async def count_chats(self, client: httpx.AsyncClient, headers: dict[str, str],
                          chat_id: str) -> tuple[int, int | None]:
        if not self.spec.routes.find_chats:
            return 0, None
        resp = await self._call(client, self.spec.routes.find_chats, self.spec.bodies.find_chats,
                                headers, {"chat_id": chat_id})
        if resp.status_code != 200:
            return resp.status_code, None
        items = pointer(_json(resp), self.spec.chats.found)
        if not isinstance(items, list):
            raise AdapterError(f"adapter {self.name}: the chat search answer is not a list at "
                               f"{self.spec.chats.found!r}: {resp.text[:200]!r}")
        return resp.status_code, sum(1 for i in items
                                     if pointer(i, self.spec.chats.found_id) == chat_id)

    async def stop(self, client: httpx.AsyncClient, headers: dict[str, str], *,
                   run_id: str | None, chat_id: str | None) -> tuple[int, bool | None]:
        if chat_id is None:
            raise AdapterError(f"adapter {self.name}: a stop needs the run's chat id")
        if run_id is None:
            if self.spec.routes.stop_chat:
                resp = await self._call(client, self.spec.routes.stop_chat,
                                        self.spec.bodies.stop_chat, headers, {"chat_id": chat_id})
                return resp.status_code, resp.status_code < 300
            code, runs, _ = await self.runs_page(client, headers, chat_id)
            active = [r["id"] for r in runs or () if r.get("status") in ACTIVE_STATUSES]
            status, stopped = code, False
            for rid in active:
                status, one = await self.stop(client, headers, run_id=rid, chat_id=chat_id)
                stopped = stopped or bool(one)
            return status, stopped
        resp = await self._call(client, self.spec.routes.stop_run, self.spec.bodies.stop_run,
                                headers, {"chat_id": chat_id, "run_id": run_id})
        return resp.status_code, (True if resp.status_code < 300
                                  else False if resp.status_code == 404 else None)

    def has_runs(self) -> bool:
        return bool(self.spec.routes.runs)

    def _status(self, raw: Any) -> str:
        statuses = self.spec.runs.statuses
        if isinstance(raw, str) and (raw in statuses or (not statuses
                                                         and raw in PROTOCOL_STATUSES)):
            return statuses.get(raw, raw)
        raise AdapterError(f"adapter {self.name}: run status {raw!r} is not in its "
                           f"runs.statuses ({', '.join(statuses) or 'the protocol'}s): has the "
                           "server's wire changed?")

    async def runs_page(self, client: httpx.AsyncClient, headers: dict[str, str], chat_id: str,
                        status: str | None = None
                        ) -> tuple[int, list[dict[str, Any]] | None, bool]:
        if not self.spec.routes.runs:
            return 0, None, False
        resp = await self._call(client, self.spec.routes.runs, "", headers, {"chat_id": chat_id})
        if resp.status_code != 200:
            return resp.status_code, None, False
        body = _json(resp)
        items = pointer(body, self.spec.runs.items)
        if not isinstance(items, list):
            raise AdapterError(f"adapter {self.name}: the runs answer is not a list at "
                               f"{self.spec.runs.items!r}: {resp.text[:200]!r}")
        runs = []
        for item in items:
            run_id = pointer(item, self.spec.runs.id)
            if not isinstance(run_id, str):
                raise AdapterError(f"adapter {self.name}: a listed run has no id at "
                                   f"{self.spec.runs.id!r}: {json.dumps(item)[:200]!r}")
            mapped = self._status(pointer(item, self.spec.runs.status))
            if status is None or mapped == status:
                runs.append({"id": run_id, "status": mapped})
        truncated = bool(self.spec.runs.next and pointer(body, self.spec.runs.next))
        return resp.status_code, runs, truncated

    async def latest(self, client: httpx.AsyncClient, headers: dict[str, str], chat_id: str
                     ) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        code, runs, _ = await self.runs_page(client, headers, chat_id)
        return code, (runs[0] if runs else None), None

    async def server_version(self, client: httpx.AsyncClient) -> tuple[str | None, str | None]:
        """(the server's version, a warning when it is not one the profile was tested
        against); (None, None) when the profile names no version route."""
        server = self.spec.server
        if not server.info:
            return None, None
        method, path = server.info.split(" ", 1)
        resp = await client.request(method, path)
        version = pointer(_json(resp), server.version) if resp.status_code == 200 else None
        if not isinstance(version, str):
            return None, (f"adapter {self.name}: {server.info} answered {resp.status_code} "
                          f"with no version at {server.version!r}")
        if server.tested and version not in server.tested:
            return version, (f"adapter {self.name} was tested against "
                             f"{', '.join(server.tested)}; this server is {version} (a changed "
                             "wire stops the run with exit 4; otherwise the verdicts stand)")
        return version, None

    async def health(self, client: httpx.AsyncClient) -> int:
        method, path = self.spec.routes.health.split(" ", 1)
        resp = await client.request(method, path)
        return resp.status_code


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None
