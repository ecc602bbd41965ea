"""What an adapter is: the one place a target's wire shape lives.

The race engine speaks to a target only through its adapter: how a turn is asked for (the chat
id in the path or the body, where the race nonce goes), how a chat is made, where the winner's
run id is read (a header, an SSE event, the protocol's start frame), what the target's conflict
answer looks like (status, code, a body pattern, the field naming the holder), how a run is
stopped, how runs are listed and their statuses mapped onto the protocol's, and how a stream
ends (a terminal frame, or the run's status once the stream closed).

What the engine records stays adapter-neutral (status, run id, terminal, the runs' mapped
statuses), so the checkers judge every target alike. Where an adapter cannot give the evidence
a property needs, it says so in :attr:`Adapter.lacks` (property id → why): the suite then
does not check that property on that target and reports it as *not checkable*, with the
reason, never ``valid`` and never a false ``invalid`` (``--strict`` makes it exit 3).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from raceharness.core.protocol import CONFLICT_HOLDER, CONFLICT_STATUS, RUN_ALREADY_ACTIVE
from raceharness.core.sse import Finding, Frame

StreamEnd = Literal["frame", "status"]
TERMINAL_FOR_STATUS = {"succeeded": "finish", "failed": "error", "aborted": "abort"}
MAX_BODY_TEXT = 300


class AdapterError(ValueError):
    """A target answered in a shape its adapter does not know (a server release that changed
    the wire): the run stops with this, it never passes silently."""


@dataclass(frozen=True)
class Conflict:
    """The target's answer to a turn on a chat another run holds (protocol.md §2.3).

    ``code``: the JSON body's ``code`` ("" none to check); ``holder``: the JSON field naming
    the holder's run id ("" the answer names none); ``pattern``: a regular expression the body
    text must match ("" none)."""

    status: int = CONFLICT_STATUS
    code: str = RUN_ALREADY_ACTIVE
    holder: str = CONFLICT_HOLDER
    pattern: str = ""

    def meta(self) -> dict[str, Any]:
        """What a trial's meta records of it (``core.checks.base.conflict_answer`` reads it)."""
        value: dict[str, Any] = {"status": self.status, "code": self.code, "holder": self.holder}
        if self.pattern:
            value["pattern"] = self.pattern
        return value


class StreamReader(Protocol):
    """Reads one 200 stream frame by frame and keeps what a client learns of it."""

    run_id: str | None
    chat_id: str | None
    terminal: str | None
    done: bool
    types: list[str]
    error_text: str | None
    findings: list[Finding]

    @property
    def started(self) -> bool:
        """The run is known to have started (the racer counts as answered)."""

    def on_frame(self, frame: Frame, offset: int) -> None: ...

    def close(self, end_offset: int | None = None) -> None: ...


def error_summary(raw: bytes, holder_field: str) -> dict[str, Any]:
    """An error body's ``code``, whether it was a JSON object, the holder's run id read from
    ``holder_field`` (recorded as ``active_run_id``; None when the field is ``""``, missing or
    not a string), its ``message`` and the start of its text (``body``, for a pattern)."""
    text = raw[:MAX_BODY_TEXT].decode("utf-8", errors="replace")
    try:
        body = json.loads(raw)
    except ValueError:
        return {"json": False, "code": None, "active_run_id": None, "body": text}
    if not isinstance(body, dict):
        return {"json": False, "code": None, "active_run_id": None, "body": text}
    code = body.get("code")
    active = body.get(holder_field) if holder_field else None
    return {"json": True, "code": code if isinstance(code, str) else None,
            "active_run_id": active if isinstance(active, str) else None,
            "message": str(body.get("message", ""))[:200], "body": text}


class Adapter(ABC):
    """A target's wire shape. Subclasses: :class:`~raceharness.adapters.aichat.AiChatAdapter`
    (protocol.md) and :class:`~raceharness.adapters.template.TemplateAdapter` (declared in a
    profile; LangGraph's is one)."""

    name: str = ""
    stream_end: StreamEnd = "frame"
    #: the first turn without a chat id creates the chat (else :meth:`create_chat` first)
    creates_chat_by_turn: bool = True
    #: a turn may name a chat id that does not exist yet and create it (create-on-first-turn)
    client_chat_ids: bool = False
    #: capabilities the adapter itself brings (core.scenario.CAPABILITIES)
    provides: frozenset[str] = frozenset()
    #: property id → why this adapter cannot give the evidence it needs
    lacks: Mapping[str, str] = {}
    conflict: Conflict = Conflict()

    # -- the raced request and its answer (pure: the racers call these) ----------------------

    @abstractmethod
    def turn_request(self, text: str, chat_id: str | None
                     ) -> tuple[str, str, list[tuple[str, str]], bytes]:
        """(method, path below the target's prefix, extra headers, body) of one turn."""

    @abstractmethod
    def new_stream(self, chat_id: str | None, headers: Mapping[str, str]) -> StreamReader:
        """A reader for a 200 stream answering a turn on ``chat_id`` with ``headers``."""

    def event_typed(self) -> bool:
        """The stream's SSE events are typed by their ``event:`` name (core.sse)."""
        return False

    def error_summary(self, raw: bytes) -> dict[str, Any]:
        return error_summary(raw, self.conflict.holder)

    # -- the other routes (httpx; ``headers`` carry the auth) ---------------------------------

    async def create_chat(self, client: httpx.AsyncClient, headers: dict[str, str]
                          ) -> tuple[int, str | None]:
        """Make a chat before its first turn: (status, chat id). Only when not
        :attr:`creates_chat_by_turn`."""
        raise NotImplementedError(f"adapter {self.name}: chats are created by their first turn")

    async def count_chats(self, client: httpx.AsyncClient, headers: dict[str, str],
                          chat_id: str) -> tuple[int, int | None]:
        """How many chat records the target holds under ``chat_id``: (status, count or None
        when it cannot tell)."""
        return 0, None

    @abstractmethod
    async def stop(self, client: httpx.AsyncClient, headers: dict[str, str], *,
                   run_id: str | None, chat_id: str | None) -> tuple[int, bool | None]:
        """Stop a run (or the chat's active run): (status, whether something was stopped)."""

    @abstractmethod
    async def runs_page(self, client: httpx.AsyncClient, headers: dict[str, str], chat_id: str,
                        status: str | None = None
                        ) -> tuple[int, list[dict[str, Any]] | None, bool]:
        """The chat's runs, newest first, as ``{id, status}`` with protocol statuses:
        (HTTP status, runs or None, truncated). Status 0: the target has no such route."""

    @abstractmethod
    async def latest(self, client: httpx.AsyncClient, headers: dict[str, str], chat_id: str
                     ) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        """The chat's latest run and its assistant message (None when the target has none)."""

    @abstractmethod
    async def health(self, client: httpx.AsyncClient) -> int: ...

    async def server_version(self, client: httpx.AsyncClient) -> tuple[str | None, str | None]:
        """(the server's version, a warning when the adapter was not tested against it)."""
        return None, None

    def has_runs(self) -> bool:
        """The target lists a chat's runs."""
        return True

    async def run_status(self, client: httpx.AsyncClient, headers: dict[str, str],
                         chat_id: str, run_id: str) -> str | None:
        """One run's protocol status (None when not found)."""
        code, runs, _ = await self.runs_page(client, headers, chat_id)
        for run in runs or ():
            if run.get("id") == run_id:
                status = run.get("status")
                return status if isinstance(status, str) else None
        return None

    def describe(self) -> dict[str, Any]:
        """What a report says of the adapter."""
        return {"name": self.name, "stream_end": self.stream_end,
                "not_checkable": dict(self.lacks)}


def holder_lacks(conflict: Conflict, declared: Mapping[str, str] | None = None,
                 name: str = "") -> dict[str, str]:
    """``declared`` (property → why not checkable) plus race/holder-named when the conflict
    answer names no holder (``holder = ""``): the one rule both adapter kinds apply."""
    lacks = dict(declared or {})
    if not conflict.holder:
        who = f"adapter {name}: " if name else ""
        lacks.setdefault("race/holder-named", f"{who}the target's conflict answer names no "
                         "holder (its [conflict] holder is \"\")")
    return lacks


def pointer(document: Any, path: str) -> Any:
    """RFC 6901 JSON pointer (``""``: the document itself); None when it leads nowhere."""
    if path == "":
        return document
    if not path.startswith("/"):
        raise ValueError(f"a JSON pointer starts with '/': {path!r}")
    node = document
    for raw in path[1:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            if key not in node:
                return None
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def header_id(headers: Mapping[str, str], name: str, pattern: re.Pattern[str] | None
              ) -> str | None:
    """An id read from a response header, through ``pattern``'s first group when given."""
    value = headers.get(name.lower())
    if not value:
        return None
    if pattern is None:
        return value.strip() or None
    match = pattern.search(value)
    return match.group(1) if match else None
