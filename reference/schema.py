"""The database schema (protocol.md §5), created idempotently at start.

Table and index names are part of the contract: the harness's database observer reads them.

An instance (re)starting next to live ones must not stall or deadlock their traffic. Even
``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on its table before it looks at the name, and
two of them in one transaction deadlock with a turn that writes a run and then a message (the
soak caught a restart failing so). So the catalogue is read first, without locks, and DDL runs
only for what is missing: under a transaction-scoped advisory lock (several instances can start
at once), with a lock timeout, retried when it loses a deadlock or times out on a lock.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import errors

from raceharness.reference.faults import Fault

GATE_INDEX = "ai_chat_runs_one_active_per_chat"
ACTIVE_STATUSES = ("pending", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "aborted")
RUN_STATUSES = ACTIVE_STATUSES + TERMINAL_STATUSES

_SCHEMA_LOCK_KEY = 0x5EED_A1C4A7  # arbitrary, stable advisory-lock key for migrations
DDL_LOCK_TIMEOUT = "5s"  # a DDL statement waits this long for a table lock, then retries
DDL_ATTEMPTS = 5
DDL_BACKOFF_S = 0.2  # doubled after each lost attempt

# What TABLES_SQL creates; when all of it exists, it is not run (its locks stall live traffic).
SCHEMA_RELATIONS = ("ai_users", "ai_api_tokens", "ai_chats", "ai_chat_messages", "ai_chat_runs",
                    "ai_chat_messages_chat_created", "ai_chat_runs_chat_created",
                    "ai_chat_runs_active_lease")

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


# Which of the names exist; to_regclass looks names up without locking anything.
PRESENT_SQL = ("SELECT coalesce(array_agg(name), '{}') FROM unnest(%s::text[]) AS name "
               "WHERE to_regclass(name) IS NOT NULL")
_NAMES = [*SCHEMA_RELATIONS, GATE_INDEX]


def missing_ddl(present: set[str], faults: frozenset[Fault] = frozenset()) -> list[str]:
    """The DDL still to run when the relations in ``present`` exist (none: nothing to do)."""
    stmts = []
    if not set(SCHEMA_RELATIONS) <= present:
        stmts.append(TABLES_SQL)
    if Fault.NO_UNIQUE_INDEX in faults:
        if GATE_INDEX in present:
            # The fault: the migration that adds the gate never ran.
            stmts.append(f"DROP INDEX IF EXISTS {GATE_INDEX}")
    elif GATE_INDEX not in present:
        stmts.append(GATE_INDEX_SQL)
    return stmts


class SchemaMissing(RuntimeError):
    """The database lacks part of the schema and the server was told not to create it."""


def check_schema_sync(dsn: str, faults: frozenset[Fault] = frozenset()) -> None:
    """Raise ``SchemaMissing`` naming what is absent, for a server started with
    ``APPLY_SCHEMA=0``: otherwise each pooled connection fails to prepare its statements and
    the pool gives up after its open timeout without saying why."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        present = _names(conn.execute(PRESENT_SQL, [_NAMES]).fetchone())
    missing = [name for name in SCHEMA_RELATIONS if name not in present]
    if Fault.NO_UNIQUE_INDEX not in faults and GATE_INDEX not in present:
        missing.append(GATE_INDEX)
    if missing:
        raise SchemaMissing(
            f"APPLY_SCHEMA: is off, and the database lacks {', '.join(missing)}; create the "
            "schema (start once with APPLY_SCHEMA=1, or run reference.schema.apply_schema_sync) "
            "or turn APPLY_SCHEMA on")


def _names(row: Any) -> set[str]:
    return set(row[0]) if row else set()


_LOCKED_PREAMBLE = (f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})",
                    f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
_RETRIED = (errors.DeadlockDetected, errors.LockNotAvailable)


def apply_schema_sync(dsn: str, faults: frozenset[Fault] = frozenset()) -> None:
    """Create whatever table or index is missing (nothing is locked when none is). The one
    implementation: the server runs it in a thread at start-up. Nothing is prepared
    (``prepare_threshold=None``): ``dsn`` may be a transaction pooler, and the retries would
    otherwise prepare the catalogue read on one server connection and run it on another."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        for attempt in range(DDL_ATTEMPTS):
            try:
                with conn.transaction():
                    row = conn.execute(PRESENT_SQL, [_NAMES]).fetchone()
                    if not missing_ddl(_names(row), faults):
                        return
                    for stmt in _LOCKED_PREAMBLE:
                        conn.execute(stmt)  # type: ignore[arg-type]
                    row = conn.execute(PRESENT_SQL, [_NAMES]).fetchone()
                    for stmt in missing_ddl(_names(row), faults):
                        conn.execute(stmt)  # type: ignore[arg-type]
                return
            except _RETRIED:
                if attempt == DDL_ATTEMPTS - 1:
                    raise
                time.sleep(DDL_BACKOFF_S * 2 ** attempt)
