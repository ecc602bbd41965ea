"""The v2 profile's model: a declared adapter's routes, bodies, stream, chats, runs, server
and not-checkable sections, read strictly (errors name the file, the field and the value).
Pure: ``template.py`` builds the adapter from it, and documents the format."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from raceharness.core.protocol import ACTIVE_STATUSES, TERMINAL_STATUSES

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
