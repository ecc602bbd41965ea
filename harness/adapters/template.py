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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from raceharness.adapters.base import (
    TERMINAL_FOR_STATUS,
    Adapter,
    AdapterError,
    Conflict,
    StreamReader,
    header_id,
    pointer,
)
from raceharness.core.protocol import ACTIVE_STATUSES, TERMINAL_STATUSES
from raceharness.core.sse import Finding, Frame, UiStream

PROTOCOL_STATUSES = (*ACTIVE_STATUSES, *TERMINAL_STATUSES)
STREAM_FORMATS = ("ui-message", "run-events")
_ROUTE_RE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) (/\S*)$")
_PLACEHOLDER_RE = re.compile(r"\{(chat_id|run_id|text)\}")
TEMPLATE_SECTIONS = ("routes", "bodies", "stream", "chats", "runs", "server", "not_checkable")
TEMPLATE_KEYS = ("adapter", "name", "provides")


@dataclass(frozen=True)
class Routes:
    turn: str = ""
    create_chat: str = ""
    stop_run: str = ""
    stop_chat: str = ""
    runs: str = ""
    find_chats: str = ""
    health: str = "GET /"


@dataclass(frozen=True)
class Bodies:
    turn: str = ""
    create_chat: str = "{}"
    stop_run: str = ""
    stop_chat: str = ""
    find_chats: str = ""


@dataclass(frozen=True)
class StreamSpec:
    format: str = "run-events"
    run_id_header: str = ""
    run_id_pattern: str = ""
    run_id_event: str = ""
    run_id_pointer: str = ""
    error_event: str = "error"
    end: str = "status"


@dataclass(frozen=True)
class ChatsSpec:
    id: str = ""
    client_ids: bool = False
    found: str = ""
    found_id: str = ""


@dataclass(frozen=True)
class RunsSpec:
    items: str = ""
    id: str = "/id"
    status: str = "/status"
    next: str = ""
    statuses: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerSpec:
    info: str = ""            # "METHOD /path" of a route naming the server's version
    version: str = ""         # the pointer to the version in its answer
    tested: tuple[str, ...] = ()  # the versions this profile was tested against


@dataclass(frozen=True)
class TemplateSpec:
    name: str = "template"
    provides: tuple[str, ...] = ()
    routes: Routes = field(default_factory=Routes)
    bodies: Bodies = field(default_factory=Bodies)
    stream: StreamSpec = field(default_factory=StreamSpec)
    chats: ChatsSpec = field(default_factory=ChatsSpec)
    runs: RunsSpec = field(default_factory=RunsSpec)
    server: ServerSpec = field(default_factory=ServerSpec)
    not_checkable: Mapping[str, str] = field(default_factory=dict)


_SPEC_SECTIONS: dict[str, type] = {"routes": Routes, "bodies": Bodies, "stream": StreamSpec,
                                   "chats": ChatsSpec, "runs": RunsSpec, "server": ServerSpec}
BUILTIN_DIR = Path(__file__).resolve().parent


class ProfileError(ValueError):
    """A profile that cannot be loaded (the message names the file, field and value)."""


def parse_template(data: Mapping[str, Any], where: str, base: TemplateSpec | None = None
                   ) -> TemplateSpec:
    """A :class:`TemplateSpec` from a v2 profile's tables (``base``'s values where absent)."""
    spec = base or TemplateSpec()
    name = data.get("name", spec.name)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", name):
        raise ProfileError(f"{where}: name: expected lowercase letters, digits and '-', "
                           f"got {name!r}")
    provides = data.get("provides", list(spec.provides))
    if not isinstance(provides, list) or not all(isinstance(p, str) for p in provides):
        raise ProfileError(f"{where}: provides: expected a list of capability names, "
                           f"got {provides!r}")
    from raceharness.core.scenario import CAPABILITIES

    strangers = [p for p in provides if p not in CAPABILITIES]
    if strangers:
        raise ProfileError(f"{where}: provides: unknown capability {strangers[0]!r}; expected "
                           f"one of {', '.join(CAPABILITIES)}")
    spec = replace(spec, name=name, provides=tuple(provides))
    for section, cls in _SPEC_SECTIONS.items():
        table = data.get(section)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: [{section}] must be a table")
        spec = replace(spec, **{section: _section(cls, getattr(spec, section), table,
                                                  f"{where}: {section}")})
    table = data.get("not_checkable")
    if table is not None:
        from raceharness.core.checks import REGISTRY

        if not isinstance(table, dict):
            raise ProfileError(f"{where}: [not_checkable] must be a table")
        for prop, why in table.items():
            if prop not in REGISTRY:
                raise ProfileError(f"{where}: not_checkable.{prop}: unknown property; expected "
                                   f"one of {', '.join(REGISTRY)}")
            if not isinstance(why, str) or not why.strip():
                raise ProfileError(f"{where}: not_checkable.{prop}: expected the reason as a "
                                   f"string, got {why!r}")
        spec = replace(spec, not_checkable={**spec.not_checkable, **table})
    _validate(spec, where)
    return spec


def _section(cls: type, current: Any, table: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    updates: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ProfileError(f"{where}.{key}: unknown field; expected one of "
                               f"{', '.join(known)}")
        default = getattr(current, key)
        if key == "statuses":
            if not isinstance(value, dict):
                raise ProfileError(f"{where}.statuses: must be a table")
            for status, mapped in value.items():
                if mapped not in PROTOCOL_STATUSES:
                    raise ProfileError(f"{where}.statuses.{status}: expected one of "
                                       f"{', '.join(PROTOCOL_STATUSES)}, got {mapped!r}")
            updates[key] = dict(value)
            continue
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProfileError(f"{where}.{key}: expected a list of strings, got {value!r}")
            updates[key] = tuple(value)
            continue
        if type(value) is not type(default):
            raise ProfileError(f"{where}.{key}: expected {type(default).__name__}, "
                               f"got {value!r}")
        updates[key] = value
    return replace(current, **updates)


def _validate(spec: TemplateSpec, where: str) -> None:
    for name in ("turn", "create_chat", "stop_run", "stop_chat", "runs", "find_chats",
                 "health"):
        route = getattr(spec.routes, name)
        if route and not _ROUTE_RE.match(route):
            raise ProfileError(f"{where}: routes.{name}: expected \"METHOD /path\", got {route!r}")
    if spec.server.info and not _ROUTE_RE.match(spec.server.info):
        raise ProfileError(f"{where}: server.info: expected \"METHOD /path\", got "
                           f"{spec.server.info!r}")
    if not spec.routes.turn:
        raise ProfileError(f"{where}: routes.turn: required (the raced request)")
    for name in ("turn", "create_chat", "stop_run", "stop_chat", "find_chats"):
        body = getattr(spec.bodies, name)
        if body:
            try:
                json.loads(body)
            except ValueError as exc:
                raise ProfileError(f"{where}: bodies.{name}: not JSON ({exc}): {body!r}") from None
    if not spec.bodies.turn:
        raise ProfileError(f"{where}: bodies.turn: required (where the turn's text goes)")
    if "{text}" not in spec.bodies.turn:
        raise ProfileError(f"{where}: bodies.turn: must place the turn's text as \"{{text}}\" "
                           "(it carries the race nonce the fake provider attributes calls by)")
    if spec.stream.format not in STREAM_FORMATS:
        raise ProfileError(f"{where}: stream.format: expected one of {', '.join(STREAM_FORMATS)}, "
                           f"got {spec.stream.format!r}")
    if spec.stream.end not in ("frame", "status"):
        raise ProfileError(f"{where}: stream.end: expected \"frame\" or \"status\", "
                           f"got {spec.stream.end!r}")
    if spec.stream.run_id_pattern:
        try:
            if re.compile(spec.stream.run_id_pattern).groups < 1:
                raise ProfileError(f"{where}: stream.run_id_pattern: needs a group, got "
                                   f"{spec.stream.run_id_pattern!r}")
        except re.error as exc:
            raise ProfileError(f"{where}: stream.run_id_pattern: {exc}") from None
    if spec.stream.format == "run-events" and not (spec.stream.run_id_header
                                                   or spec.stream.run_id_event):
        raise ProfileError(f"{where}: stream: run-events need run_id_header or run_id_event "
                           "(where the winner's run id is read)")
    if spec.routes.create_chat and not spec.chats.id:
        raise ProfileError(f"{where}: chats.id: required with routes.create_chat (where the "
                           "new chat's id is read)")
    if "{chat_id}" not in spec.routes.turn and "{chat_id}" not in spec.bodies.turn:
        raise ProfileError(f"{where}: routes.turn/bodies.turn: neither places \"{{chat_id}}\"")
    if spec.runs.statuses:
        missing = [s for s in PROTOCOL_STATUSES if s not in spec.runs.statuses.values()
                   and s != "pending"]
        if missing and spec.routes.runs:
            raise ProfileError(f"{where}: runs.statuses: nothing maps to {', '.join(missing)}")


def load_builtin(name: str) -> TemplateSpec:
    path = BUILTIN_DIR / f"{name}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return parse_template(data, f"built-in adapter {name}")


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
        lacks = dict(spec.not_checkable)
        if not conflict.holder:
            lacks.setdefault("race/holder-named", f"adapter {spec.name}: the target's conflict "
                             "answer names no holder")
        self.lacks = lacks
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


def terminal_for(status: str | None) -> str | None:
    """The terminal frame a run's protocol status stands for (None while active)."""
    return TERMINAL_FOR_STATUS.get(status or "")
