"""The database schema (protocol.md §5), created idempotently at start.

Table and index names are part of the contract: the harness's database observer reads them.
DDL runs under a transaction-scoped advisory lock so several instances can start at once.
"""

from __future__ import annotations

import psycopg

from reference.faults import Fault

GATE_INDEX = "ai_chat_runs_one_active_per_chat"
ACTIVE_STATUSES = ("pending", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "aborted")
RUN_STATUSES = ACTIVE_STATUSES + TERMINAL_STATUSES

_SCHEMA_LOCK_KEY = 0x5EED_A1C4A7  # arbitrary, stable advisory-lock key for migrations

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS ai_users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ai_api_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES ai_users(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ai_chats (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    creator_id  uuid NOT NULL REFERENCES ai_users(id) ON DELETE CASCADE,
    title       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE TABLE IF NOT EXISTS ai_chat_messages (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    chat_id     uuid NOT NULL REFERENCES ai_chats(id) ON DELETE CASCADE,
    user_id     uuid REFERENCES ai_users(id) ON DELETE SET NULL,
    role        text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content     text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'completed'
                CHECK (status IN ('streaming', 'completed', 'error', 'aborted')),
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ai_chat_messages_chat_created
    ON ai_chat_messages (chat_id, created_at);
CREATE TABLE IF NOT EXISTS ai_chat_runs (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    chat_id               uuid NOT NULL REFERENCES ai_chats(id) ON DELETE CASCADE,
    created_by            uuid REFERENCES ai_users(id) ON DELETE SET NULL,
    assistant_message_id  uuid REFERENCES ai_chat_messages(id) ON DELETE SET NULL,
    trigger               text NOT NULL DEFAULT 'user',
    status                text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'running',
                                            'succeeded', 'failed', 'aborted')),
    error                 text,
    step_count            integer NOT NULL DEFAULT 0,
    stop_requested_at     timestamptz,
    started_at            timestamptz,
    finished_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    owner_instance        text,
    lease_expires_at      timestamptz
);
CREATE INDEX IF NOT EXISTS ai_chat_runs_chat_created ON ai_chat_runs (chat_id, created_at DESC);
CREATE INDEX IF NOT EXISTS ai_chat_runs_active_lease ON ai_chat_runs (lease_expires_at)
    WHERE status IN ('pending', 'running');
"""

GATE_INDEX_SQL = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS {GATE_INDEX} "
    "ON ai_chat_runs (chat_id) WHERE status IN ('pending', 'running')"
)


def _statements(faults: frozenset[Fault]) -> list[str]:
    stmts = [f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})", TABLES_SQL]
    if Fault.NO_UNIQUE_INDEX in faults:
        # The fault: the migration that adds the gate never ran.
        stmts.append(f"DROP INDEX IF EXISTS {GATE_INDEX}")
    else:
        stmts.append(GATE_INDEX_SQL)
    return stmts


async def apply_schema(conn: psycopg.AsyncConnection[object],
                       faults: frozenset[Fault] = frozenset()) -> None:
    """Create every table and index if missing, in one transaction."""
    async with conn.transaction():
        for stmt in _statements(faults):
            await conn.execute(stmt)  # type: ignore[arg-type]


def apply_schema_sync(dsn: str, faults: frozenset[Fault] = frozenset()) -> None:
    """The same, for synchronous callers (tests, the CLI)."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for stmt in _statements(faults):
            conn.execute(stmt)  # type: ignore[arg-type]
