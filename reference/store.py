"""Chats, messages and run reads: the SQL that is not the gate, and the wire shapes of rows."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from raceharness.reference.gate_sql import AsyncConn

RUN_COLUMNS = ("id, chat_id, status, error, step_count, stop_requested_at, started_at, "
               "finished_at, created_at, updated_at, lease_expires_at, assistant_message_id")
MESSAGE_COLUMNS = "id, chat_id, user_id, role, content, status, metadata, created_at, updated_at"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_wire(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        value = row[key]
        if isinstance(value, UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = _iso(value)
        out[_camel(key)] = value
    return out


RUN_WIRE_KEYS = ("id", "chat_id", "status", "error", "step_count", "stop_requested_at",
                 "started_at", "finished_at", "created_at", "updated_at", "lease_expires_at")
MESSAGE_WIRE_KEYS = ("id", "chat_id", "role", "content", "status", "metadata",
                     "created_at", "updated_at")


async def chat_owner(conn: AsyncConn, chat_id: UUID) -> UUID | None:
    """The chat's creator, or None when it does not exist or is soft-deleted."""
    cur = await conn.execute(
        "SELECT creator_id FROM ai_chats WHERE id = %s AND deleted_at IS NULL", (chat_id,))
    row = await cur.fetchone()
    return None if row is None else row[0]


async def create_chat(conn: AsyncConn, user_id: UUID, title: str) -> UUID:
    cur = await conn.execute(
        "INSERT INTO ai_chats (creator_id, title) VALUES (%s, %s) RETURNING id",
        (user_id, title[:200]))
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def insert_user_message(conn: AsyncConn, chat_id: UUID, user_id: UUID, text: str) -> UUID:
    cur = await conn.execute(
        """INSERT INTO ai_chat_messages (chat_id, user_id, role, content, status)
           VALUES (%s, %s, 'user', %s, 'completed') RETURNING id""", (chat_id, user_id, text))
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def seed_assistant_message(conn: AsyncConn, chat_id: UUID, run_id: UUID | None) -> UUID:
    """Insert the streaming assistant message and link it to the run."""
    meta = {"runId": str(run_id)} if run_id is not None else {}
    cur = await conn.execute(
        """INSERT INTO ai_chat_messages (chat_id, role, content, status, metadata)
           VALUES (%s, 'assistant', '', 'streaming', %s::jsonb) RETURNING id""",
        (chat_id, json.dumps(meta)))
    row = await cur.fetchone()
    assert row is not None
    if run_id is not None:
        await conn.execute(
            "UPDATE ai_chat_runs SET assistant_message_id = %s, updated_at = now() WHERE id = %s",
            (row[0], run_id))
    return row[0]


async def history(conn: AsyncConn, chat_id: UUID, exclude_id: UUID | None,
                  limit: int) -> list[dict[str, str]]:
    """The chat's newest ``limit`` completed messages, oldest first, as provider ``messages``.

    Bounded: a long chat must not grow every provider request (and its cost and latency)
    without end. The newest are kept, so the turn's own user message, the newest completed
    one when the run starts, is always the last; the index on (chat_id, created_at) serves
    the newest-first scan."""
    cur = await conn.execute(
        """SELECT role, content FROM (
               SELECT role, content, created_at, id FROM ai_chat_messages
                WHERE chat_id = %s AND status = 'completed' AND content <> ''
                  AND (%s::uuid IS NULL OR id <> %s::uuid)
                ORDER BY created_at DESC, id DESC LIMIT %s) AS newest
            ORDER BY created_at, id""", (chat_id, exclude_id, exclude_id, limit))
    return [{"role": r[0], "content": r[1]} for r in await cur.fetchall()]


async def run_for_stop(conn: AsyncConn, run_id: UUID) -> dict[str, Any] | None:
    """A run with its chat's owner, for authorising ``/stop``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT r.id, r.chat_id, r.status, r.owner_instance, c.creator_id,
                      (r.lease_expires_at IS NOT NULL AND r.lease_expires_at < now()) AS expired
                 FROM ai_chat_runs r JOIN ai_chats c ON c.id = r.chat_id
                WHERE r.id = %s AND c.deleted_at IS NULL""", (run_id,))
        return await cur.fetchone()


async def active_run_for_stop(conn: AsyncConn, chat_id: UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT id, chat_id, status, owner_instance,
                      (lease_expires_at IS NOT NULL AND lease_expires_at < now()) AS expired
                 FROM ai_chat_runs WHERE chat_id = %s AND status IN ('pending', 'running')
                ORDER BY created_at DESC, id DESC LIMIT 1""", (chat_id,))
        return await cur.fetchone()


async def latest_run(conn: AsyncConn, chat_id: UUID) -> tuple[dict[str, Any] | None,
                                                             dict[str, Any] | None]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT {RUN_COLUMNS} FROM ai_chat_runs WHERE chat_id = %s
                 ORDER BY created_at DESC, id DESC LIMIT 1""", (chat_id,))
        run = await cur.fetchone()
        if run is None:
            return None, None
        message = None
        if run["assistant_message_id"] is not None:
            await cur.execute(f"SELECT {MESSAGE_COLUMNS} FROM ai_chat_messages WHERE id = %s",
                              (run["assistant_message_id"],))
            message = await cur.fetchone()
    return (to_wire(run, RUN_WIRE_KEYS),
            None if message is None else to_wire(message, MESSAGE_WIRE_KEYS))


RUNS_PAGE_DEFAULT = 50
RUNS_PAGE_MAX = 200


@dataclass(frozen=True)
class RunsPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


class BadCursor(ValueError):
    """A ``cursor`` this server did not issue (the caller answers 400)."""


def encode_cursor(created_at: datetime, run_id: UUID) -> str:
    """The position after a run, newest first: its (created_at, id), opaque to clients."""
    raw = json.dumps([created_at.isoformat(), str(run_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


_CURSOR_MAX_CHARS = 200  # an issued cursor is about 100


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) of an issued cursor; :class:`BadCursor` for anything else."""
    try:
        if len(cursor) > _CURSOR_MAX_CHARS:
            raise ValueError("too long")
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(decoded, list) and len(decoded) == 2
                and all(isinstance(v, str) for v in decoded)):
            raise ValueError("not a [created_at, id] pair")
        at = datetime.fromisoformat(decoded[0])
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, UUID(decoded[1])
    except (ValueError, RecursionError) as exc:  # binascii.Error is a ValueError
        raise BadCursor("not a cursor this server issued") from exc


async def list_runs(conn: AsyncConn, chat_id: UUID, status: str | None, *,
                    limit: int = RUNS_PAGE_DEFAULT,
                    after: tuple[datetime, UUID] | None = None) -> RunsPage:
    """One page of the chat's runs, newest first (created_at DESC, id DESC), resumed after
    the position ``after`` (a decoded cursor). Keyset paging: a page costs the same however
    deep it is, and a run started between two pages shifts nothing (it sorts before the
    first page). One row more than the page is read to learn whether another follows."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT {RUN_COLUMNS} FROM ai_chat_runs
                 WHERE chat_id = %(chat)s AND (%(status)s::text IS NULL OR status = %(status)s)
                   AND (%(at)s::timestamptz IS NULL
                        OR (created_at, id) < (%(at)s::timestamptz, %(id)s::uuid))
                 ORDER BY created_at DESC, id DESC LIMIT %(limit)s""",
            {"chat": chat_id, "status": status, "limit": limit + 1,
             "at": None if after is None else after[0], "id": None if after is None else after[1]})
        rows = await cur.fetchall()
    page = rows[:limit]
    next_cursor = (encode_cursor(page[-1]["created_at"], page[-1]["id"])
                   if len(rows) > limit else None)
    return RunsPage([to_wire(r, RUN_WIRE_KEYS) for r in page], next_cursor)
