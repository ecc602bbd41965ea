"""Schema application at start-up: idempotent, and harmless to a live database.

An instance restarting next to live ones used to run every ``CREATE ... IF NOT EXISTS`` again;
``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on its table before it checks the name, so a
restart stalled behind (or deadlocked with) the other instances' turns. The soak caught it."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import psycopg
import pytest

from raceharness.reference.app import create_app
from raceharness.reference.faults import Fault
from raceharness.reference.schema import (
    GATE_INDEX,
    SCHEMA_RELATIONS,
    SchemaMissing,
    apply_schema_sync,
    check_schema_sync,
    missing_ddl,
)
from tests.refkit import make_settings, running_reference


def with_lock_timeout(dsn: str, ms: int = 500) -> str:
    """The DSN, with every statement failing instead of waiting > ms for a lock."""
    return f"{dsn}?options={quote(f'-c lock_timeout={ms}')}"


def relations(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relname = ANY(%s)",
                            [[*SCHEMA_RELATIONS, GATE_INDEX]]).fetchall()
    return {r[0] for r in rows}


@pytest.fixture
def writer(pg_dsn: str):  # type: ignore[no-untyped-def]
    """A live turn's transaction: it holds the lock an INSERT into the runs and messages takes."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("LOCK TABLE ai_chat_runs, ai_chat_messages IN ROW EXCLUSIVE MODE")
        yield conn
        conn.rollback()


def test_an_empty_database_gets_every_table_and_index(pg_empty_dsn: str) -> None:
    apply_schema_sync(pg_empty_dsn)
    assert relations(pg_empty_dsn) == {*SCHEMA_RELATIONS, GATE_INDEX}
    apply_schema_sync(pg_empty_dsn)  # idempotent
    assert relations(pg_empty_dsn) == {*SCHEMA_RELATIONS, GATE_INDEX}


def test_a_restart_takes_no_table_lock_when_the_schema_is_there(
        pg_dsn: str, writer: psycopg.Connection[object]) -> None:
    # Before the fix this raised LockNotAvailable: CREATE INDEX IF NOT EXISTS waited for
    # a SHARE lock behind the open write.
    apply_schema_sync(with_lock_timeout(pg_dsn))
    assert relations(pg_dsn) == {*SCHEMA_RELATIONS, GATE_INDEX}


@pytest.mark.anyio
async def test_a_server_starting_next_to_live_traffic_takes_no_table_lock(
        pg_dsn: str, writer: psycopg.Connection[object]) -> None:
    """The server's own start-up path (create_app's lifespan applies the schema)."""
    async with running_reference(make_settings(with_lock_timeout(pg_dsn)), None) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(ref.url + "/healthz")).status_code == 200
    assert relations(pg_dsn) == {*SCHEMA_RELATIONS, GATE_INDEX}


def test_the_no_unique_index_fault_drops_the_gate_and_the_correct_start_restores_it(
        pg_dsn: str) -> None:
    apply_schema_sync(pg_dsn, frozenset({Fault.NO_UNIQUE_INDEX}))
    assert GATE_INDEX not in relations(pg_dsn)
    apply_schema_sync(pg_dsn)
    assert GATE_INDEX in relations(pg_dsn)


def test_missing_ddl_runs_only_what_is_missing() -> None:
    everything = {*SCHEMA_RELATIONS, GATE_INDEX}
    assert missing_ddl(everything) == []
    assert missing_ddl(everything - {GATE_INDEX}) == [
        f"CREATE UNIQUE INDEX IF NOT EXISTS {GATE_INDEX} "
        "ON ai_chat_runs (chat_id) WHERE status IN ('pending', 'running')"]
    assert len(missing_ddl(everything - {"ai_chat_runs_active_lease"})) == 1
    assert missing_ddl(set(SCHEMA_RELATIONS), frozenset({Fault.NO_UNIQUE_INDEX})) == []
    assert missing_ddl(everything, frozenset({Fault.NO_UNIQUE_INDEX})) == [
        f"DROP INDEX IF EXISTS {GATE_INDEX}"]


def test_with_apply_schema_off_a_missing_schema_is_named(pg_empty_dsn: str) -> None:
    with pytest.raises(SchemaMissing) as caught:
        check_schema_sync(pg_empty_dsn)
    assert "APPLY_SCHEMA" in str(caught.value)
    assert "ai_chat_runs" in str(caught.value) and GATE_INDEX in str(caught.value)
    apply_schema_sync(pg_empty_dsn, frozenset({Fault.NO_UNIQUE_INDEX}))
    with pytest.raises(SchemaMissing) as caught:  # the gate index alone is missing
        check_schema_sync(pg_empty_dsn)
    assert "ai_chat_runs," not in str(caught.value) and GATE_INDEX in str(caught.value)
    check_schema_sync(pg_empty_dsn, frozenset({Fault.NO_UNIQUE_INDEX}))  # as that fault wants
    apply_schema_sync(pg_empty_dsn)
    check_schema_sync(pg_empty_dsn)


@pytest.mark.anyio
async def test_a_server_with_apply_schema_off_names_the_missing_schema(pg_empty_dsn: str) -> None:
    """Rather than its pool failing to prepare statements until the open timeout."""
    app = create_app(make_settings(pg_empty_dsn, apply_schema=False))
    with pytest.raises(SchemaMissing, match="ai_chat_runs"):
        async with app.router.lifespan_context(app):
            pass
    assert relations(pg_empty_dsn) == set()  # nothing created behind the setting's back
