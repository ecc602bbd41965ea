"""Shared fixtures: one self-provisioned Postgres per session, a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from raceharness.stack.postgres import PostgresCluster, PostgresUnavailable, provision

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

TEMPLATE_DB = "tmpl_reference"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A Postgres server for the whole session; fails (never skips) when none can be had."""
    try:
        cluster = provision()
    except PostgresUnavailable as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(f"no Postgres for the test suite: {problem}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def pg_template(pg_cluster: PostgresCluster) -> Iterator[str]:
    """Name of a database holding the reference schema, used as a template per test."""
    from raceharness.reference.schema import (
        apply_schema_sync,  # lazy: reference/ may not be importable yet
    )

    pg_cluster.drop_database(TEMPLATE_DB)  # a leftover from an earlier run on a DSN server
    apply_schema_sync(pg_cluster.create_database(TEMPLATE_DB))
    yield TEMPLATE_DB
    pg_cluster.drop_database(TEMPLATE_DB)


@pytest.fixture
def pg_dsn(pg_cluster: PostgresCluster, pg_template: str) -> Iterator[str]:
    """DSN of a fresh database with the reference schema, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name, template=pg_template)
    try:
        yield dsn
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def pg_empty_dsn(pg_cluster: PostgresCluster) -> Iterator[str]:
    """DSN of a fresh, empty database (from template0), dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name, template="template0")
    try:
        yield dsn
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(autouse=True)
def _no_ci_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports written by tests must not land in a real CI job's step summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def anyio_backend() -> str:
    """The reference server runs on asyncio (psycopg's async API needs it)."""
    return "asyncio"


USER_TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-9876543210"}


@pytest.fixture
def users(pg_dsn: str) -> dict[str, str]:
    """Two users of the fresh database: name -> bearer token."""
    from raceharness.reference.auth import ensure_user_sync

    for name, token in USER_TOKENS.items():
        ensure_user_sync(pg_dsn, name, token)
    return dict(USER_TOKENS)
