"""``--pooler pgbouncer``: PgBouncer (transaction pooling) started in front of the harness's
Postgres and removed after it, and the embedded stack racing the reference through it.

Real Postgres and a real PgBouncer (the Debian package ``pgbouncer``): when it is missing these
tests fail with the install hint, never skip.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from raceharness.commands.cli import main
from raceharness.stack.pooler import PgBouncer, PoolerUnavailable, start_pgbouncer
from raceharness.stack.postgres import PostgresCluster
from tests.harness.stack.test_postgres import _alive, _wait_gone

REPO = Path(__file__).resolve().parents[3]


def _pid(bouncer: PgBouncer) -> int:
    return int((Path(bouncer.tempdir) / "pgbouncer.pid").read_text().split()[0])


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def _started(cluster: PostgresCluster) -> PgBouncer:
    try:
        return start_pgbouncer(cluster)
    except PoolerUnavailable as exc:
        pytest.fail(f"no PgBouncer: {exc}", pytrace=False)


def test_pgbouncer_pools_by_transaction_and_close_removes_it(
        pg_cluster: PostgresCluster, pg_empty_dsn: str) -> None:
    bouncer = _started(pg_cluster)
    pid, tempdir = _pid(bouncer), bouncer.tempdir
    try:
        assert bouncer.mode == "transaction" and bouncer.name.startswith("PgBouncer 1.")
        if os.geteuid() == 0:  # PgBouncer refuses root: it runs as the cluster's user
            assert _uid(pid) != 0
        dbname = psycopg.conninfo.conninfo_to_dict(pg_empty_dsn)["dbname"]
        with psycopg.connect(bouncer.dsn_for(str(dbname)), autocommit=True,
                             prepare_threshold=None) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
        assert row == (dbname,)
        ini = (Path(tempdir) / "pgbouncer.ini").read_text()
        assert "pool_mode = transaction" in ini and "listen_addr = 127.0.0.1" in ini
        assert oct((Path(tempdir) / "userlist.txt").stat().st_mode & 0o777) == "0o600"
    finally:
        bouncer.close()
    assert not os.path.exists(tempdir) and not _alive(pid)
    bouncer.close()  # idempotent


CHILD = textwrap.dedent(
    """
    import sys
    from raceharness.stack.postgres import PostgresCluster
    from raceharness.stack.pooler import start_pgbouncer
    bouncer = start_pgbouncer(PostgresCluster(dsn=sys.argv[1], source="dsn"))
    pid = open(bouncer.tempdir + "/pgbouncer.pid").read().split()[0]
    print(bouncer.tempdir, pid, flush=True)
    sys.stdin.read()  # until killed
    """
)


def test_a_harness_killed_with_sigkill_leaves_no_pgbouncer(pg_empty_dsn: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, pg_empty_dsn], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert len(line) == 2, child.stderr.read() if child.stderr else ""
        tempdir, pid = line[0], int(line[1])
        assert _alive(pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _wait_gone(tempdir, pid)  # the watchdog cleans up asynchronously
    assert not os.path.exists(tempdir) and not _alive(pid)


# -- the command line ------------------------------------------------------------------------

@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> str:
    """The embedded stack on the session's Postgres (instead of a cluster per run)."""
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    return pg_empty_dsn


def test_scenarios_run_through_pgbouncer(embedded_db: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``harness run same-chat-burst multi-instance --pooler pgbouncer``: every property valid
    through the pooler, a stop sent to another instance included; the reproduce line says
    --pooler."""
    code = main(["run", "same-chat-burst", "multi-instance", "--pooler", "pgbouncer",
                 "--trials", "1", "--seed", "5", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "--pooler pgbouncer" in out
    assert re.search(r"^same-chat-burst\s+valid", out, re.M)
    assert re.search(r"^multi-instance\s+valid", out, re.M)


def test_a_gate_fault_is_caught_through_pgbouncer(embedded_db: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["race", "--n", "50", "--fault", "no-unique-index", "--pooler", "pgbouncer",
                 "--seed", "5", "-q"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert re.search(r"^race/one-winner\s+invalid", out, re.M)


def test_a_missing_pgbouncer_is_exit_4_naming_the_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_PGBOUNCER", "/nonexistent/pgbouncer")
    assert main(["race", "--n", "2", "--pooler", "pgbouncer", "-q"]) == 4
    assert "apt-get install pgbouncer" in capsys.readouterr().err


def test_the_pooler_is_for_the_embedded_stack_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["race", "--target", "http://127.0.0.1:9", "--token", "t", "--pooler",
                 "pgbouncer"]) == 2
    assert "--pooler applies to the embedded reference only" in capsys.readouterr().err


def test_serve_reference_without_pgbouncer_is_exit_4_naming_the_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_PGBOUNCER", "/nonexistent/pgbouncer")
    assert main(["serve-reference", "--token", "t", "--pooler", "pgbouncer"]) == 4
    assert "apt-get install pgbouncer" in capsys.readouterr().err
