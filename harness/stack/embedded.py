"""The embedded default target: Postgres, the reference server (one or several instances) and
the fake provider, all on free loopback ports and torn down after, even on Ctrl-C.

The reference runs as its own processes (``python -m raceharness.reference``) so the harness
talks to it only over HTTP, exactly as it would to a deployment it did not start. Bearer tokens
go through the environment, never the command line. Each service gets a database of its own,
so a fault that changes the schema (``no-unique-index``) never leaks into the next service.

A reference process outlives a harness killed with SIGKILL unless something ends it: atexit does
not run then, and PR_SET_PDEATHSIG fires when trio's spawning worker thread exits, not when the
harness does. So each process is started with ``REFERENCE_PARENT_PID`` = the harness's pid, and
the reference watches its own parent: re-parented (the harness died), it shuts itself down.

Database outages (the ``db-outage*`` scenarios) act on the service's own database only:
``ALTER DATABASE ... ALLOW_CONNECTIONS false`` plus ``pg_terminate_backend`` of every backend
connected to it. From the service's side that is what a stopped server does — every connection
dies with ``57P01 terminating connection due to administrator command`` (the same signal a
shutdown sends each backend) and every new connection is refused — without stopping the cluster,
which the test suite shares between tests and which a ``--dsn`` user may share with anything.

A real restart (the ``postgres-restart`` scenarios) is another matter: it stops the whole
cluster, so the harness does it only to a cluster it started itself (``PostgresCluster.stop``,
``start``, ``restart``: pg_ctl, the same port), never to a server given by a DSN, which may be
shared (``postgres_unavailable`` says why). Such a cluster runs with ``synchronous_commit=off``
for speed, and an immediate stop then loses what it acknowledged in the last few hundred
milliseconds (WAL not yet written); so each service database on it commits durably
(``ALTER DATABASE ... SET synchronous_commit = on``), as a production server does: a commit the
service was told of survives a crash of Postgres (``fsync`` stays off: not of the machine).

With ``--pooler pgbouncer`` (``embedded_postgres(pooler=...)``), a PgBouncer in transaction
pooling mode stands in front of the cluster (``stack/pooler.py``), and each reference instance
reaches its database through it (``DATABASE_POOLER=transaction``), with its stop listener's one
session connection straight to Postgres (``LISTEN_DSN``). The harness's own connections —
observations, the outage controls, the set-up — always reach Postgres itself, so an outage
taken through them is one the pooler has to live through too: its server connections are
terminated with every other backend of the database, and it reconnects once it is back.

Why one module of ~550 lines: one embedded deployment and every control the scenarios use on it
(kill, restart, database outages, real Postgres restarts, the held gate) act on the same
processes and databases; the seam for a split is the database controls (outage, restart, held
gate) apart from the processes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from raceharness.net.target import Target
from raceharness.stack.pooler import POOLERS, PgBouncer, find_pgbouncer, start_pgbouncer
from raceharness.stack.postgres import PostgresCluster, PostgresUnavailable, provision

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0

# Reference processes still running: killed at interpreter exit, should a run be abandoned
# without its cleanup (e.g. a test timeout inside trio). (PR_SET_PDEATHSIG is no help here:
# trio forks from a worker thread, and the signal fires when that thread exits.)
_LIVE: set[trio.Process] = set()


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(OSError):
            proc.kill()


atexit.register(_kill_leftovers)



class EmbeddedStartError(Exception):
    """The embedded stack could not start (exit code 4); the message has the log tail."""


@dataclass
class Instance:
    url: str
    port: int
    env: dict[str, str]
    process: trio.Process
    log_path: str


class DatabaseControlError(Exception):
    """The harness could not take the service's database away or give it back."""


# A client backend of the outage's database, other than the one asking.
_BACKENDS = """SELECT pid FROM pg_stat_activity
 WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()"""
# The turns inside the gate: backends blocked by the harness's uncommitted run (only an INSERT
# on the same chat waits on it: the unique index; every reader's snapshot skips it).
_GATE_WAITERS = """SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))"""


def database_down(admin_dsn: str, name: str, *, spare: int | None = None,
                  bound_s: float = 10.0) -> int:
    """Refuse new connections to database ``name`` and terminate every client backend on it
    (but ``spare``), until none is left; returns how many were terminated. ``admin_dsn`` must
    reach another database of the server as the owner of ``name`` (or a superuser)."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.info.dbname == name:
            raise DatabaseControlError(f"cannot take database {name!r} away through itself")
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
            sql.Identifier(name)))
        return len(_terminate_backends(conn, name, spare, bound_s))


def database_up(admin_dsn: str, name: str) -> None:
    """Let database ``name`` accept connections again."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
            sql.Identifier(name)))


def _terminate_backends(conn: psycopg.Connection[Any], name: str, spare: int | None,
                        bound_s: float) -> set[int]:
    terminated: set[int] = set()
    deadline = time.monotonic() + bound_s
    while True:
        pids = [pid for (pid,) in conn.execute(_BACKENDS, (name,)).fetchall() if pid != spare]
        if not pids:
            return terminated
        if time.monotonic() > deadline:
            raise DatabaseControlError(f"{len(pids)} backend(s) of database {name!r} still "
                                       f"there {bound_s:g}s after being terminated")
        for pid in pids:  # waits (bounded) until each backend has exited
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        terminated.update(pids)


@dataclass
class EmbeddedService:
    """One embedded reference deployment: its instances share one database.

    ``admin_dsn`` reaches the server through another database (for the outage controls) and
    ``db_name`` is the service's own database; None when it runs on the DSN's database.
    """

    dsn: str
    token: str
    other_token: str
    instances: list[Instance] = field(default_factory=list)
    admin_dsn: str | None = None
    db_name: str | None = None
    database_is_down: bool = False
    cluster: PostgresCluster | None = field(default=None, repr=False)  # the service's server
    postgres_is_down: bool = False  # the cluster stopped by postgres_stop, not started again
    _held: psycopg.Connection[Any] | None = field(default=None, repr=False)
    _prepared: str | None = field(default=None, repr=False)  # hold_gate(prepared=True)'s gid
    _watch: psycopg.Connection[Any] | None = field(default=None, repr=False)

    @property
    def targets(self) -> list[Target]:
        return [Target(base_url=i.url, token=self.token, other_token=self.other_token)
                for i in self.instances]

    # -- control (the embedded stack only: the harness never kills what it did not start) --

    async def kill(self, k: int) -> None:
        """SIGKILL instance ``k``: it dies without ending its runs (a crash)."""
        proc = self.instances[k].process
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        _LIVE.discard(proc)

    async def restart(self, k: int) -> None:
        """Start instance ``k`` again on the same port and database."""
        old = self.instances[k]
        self.instances[k] = await _start_process(old.env, old.port)

    def reject_run_inserts(self, on: bool) -> None:
        """A database failure limited to starting runs: every run INSERT fails (23514) while
        on. Everything else keeps working, so only the gate's failure path is exercised."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if on:
                conn.execute("ALTER TABLE ai_chat_runs ADD CONSTRAINT harness_outage "
                             "CHECK (false) NOT VALID")
            else:
                conn.execute("ALTER TABLE ai_chat_runs DROP CONSTRAINT IF EXISTS harness_outage")

    @property
    def controls_database(self) -> bool:
        """The service has a database of its own that the harness may take away."""
        return self.admin_dsn is not None and self.db_name is not None

    def _database(self) -> tuple[str, str]:
        if self.admin_dsn is None or self.db_name is None:
            raise DatabaseControlError("the service runs on the DSN's own database: the "
                                       "harness takes away only a database it created")
        return self.admin_dsn, self.db_name

    def database_down(self) -> int:
        """Postgres goes away under the service: every backend connected to its database is
        terminated and new connections are refused, until ``database_up``. A run held by
        ``hold_gate`` is rolled back only after every other backend is gone, so no turn
        waiting behind it gets through. Returns how many backends were terminated."""
        admin, name = self._database()
        self._close_watch()
        spare = None if self._held is None else self._held.info.backend_pid
        try:
            terminated = database_down(admin, name, spare=spare)
        finally:
            self.release_gate()
        self.database_is_down = True
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            terminated += len(_terminate_backends(conn, name, None, 10.0))  # the holder's
        return terminated

    def database_up(self) -> None:
        """The service's database accepts connections again (the cluster started first, if a
        restart left it stopped)."""
        if self.postgres_is_down:
            self.postgres_start()
        admin, name = self._database()
        database_up(admin, name)
        self.database_is_down = False

    # -- a real restart of the cluster (only one the harness started) --

    def postgres_unavailable(self) -> str | None:
        """Why the service's Postgres cannot be stopped and started here (None: it can)."""
        if self.cluster is None:
            return "the service was started without its Postgres cluster"
        return self.cluster.restart_unavailable()

    def _cluster(self) -> PostgresCluster:
        why = self.postgres_unavailable()
        if why is not None or self.cluster is None:
            raise DatabaseControlError(why or "no cluster")
        return self.cluster

    def postgres_restart(self, mode: str) -> float:
        """``pg_ctl restart -m MODE`` of the cluster under the service: every backend ends (a
        run held by ``hold_gate`` with them) and the server accepts connections again when
        this returns. Returns the seconds it took."""
        cluster = self._cluster()
        self._close_watch()
        self.postgres_is_down = True
        try:
            return cluster.restart(mode)
        finally:
            self.release_gate()
            self.postgres_is_down = not cluster.running()

    def postgres_stop(self, mode: str) -> float:
        """``pg_ctl stop -m MODE``: the server is gone (connections refused) until
        ``postgres_start``. Returns the seconds it took."""
        cluster = self._cluster()
        self._close_watch()
        self.postgres_is_down = True
        try:
            return cluster.stop(mode)
        finally:
            self.release_gate()
            self.postgres_is_down = not cluster.running()

    def postgres_start(self) -> float:
        """``pg_ctl start`` on the same port (then a gate still held is let go); returns the
        seconds it took."""
        took = self._cluster().start()
        self.postgres_is_down = False
        self.release_gate()
        return took

    def hold_gate(self, chat_id: str, *, prepared: bool = False) -> None:
        """An uncommitted active run on the chat, held open: the pre-check does not see it, so
        every turn on the chat passes it and then waits inside the gate, its run INSERT queued
        on the unique index behind this one until the transaction ends. ``prepared``: the
        transaction is prepared (two-phase), so it outlives its backend and even a restart of
        the server: in a real shutdown no turn waiting behind it can get through while the
        backends end one by one (``postgres-restart``); ``release_gate`` rolls it back."""
        conn = psycopg.connect(self.dsn, connect_timeout=10)
        try:
            conn.execute("INSERT INTO ai_chat_runs (chat_id, status) VALUES (%s, 'running')",
                         (chat_id,))
            if prepared:
                gid = f"raceharness-gate-{secrets.token_hex(6)}"
                conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
                self._prepared = gid
            self._watch = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except BaseException:
            conn.close()
            raise
        if prepared:
            conn.close()
        else:
            self._held = conn

    def gate_waiters(self) -> int:
        """How many turns wait inside the gate behind ``hold_gate``'s run."""
        if self._watch is None or (self._held is None and self._prepared is None):
            return 0
        blocker = 0 if self._held is None else self._held.info.backend_pid  # 0: prepared
        row = self._watch.execute(_GATE_WAITERS, (blocker,)).fetchone()
        return 0 if row is None else int(row[0])

    def release_gate(self) -> None:
        """End ``hold_gate``'s transaction (rolled back: its run never existed). A prepared
        one is kept for later while the server is down."""
        self._close_watch()
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(psycopg.Error):
                held.rollback()
            held.close()
        if self._prepared is not None:
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(
                        sql.Literal(self._prepared)))
            except psycopg.errors.UndefinedObject:
                pass  # not there (any more): nothing holds the gate
            except psycopg.OperationalError:
                if self.postgres_is_down:
                    return  # rolled back once the server is started again
                raise
            self._prepared = None

    def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a server, below the kernel's ephemeral range when possible: a server
    restarted on its port (crash-recovery, the soak) must not find that a client's outgoing
    connection has been given the port meanwhile (bind then fails: address in use)."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randrange(10_000, low) if low > 10_000 else 0
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    with socket.socket() as sock:  # fall back to any port the kernel gives
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.asynccontextmanager
async def embedded_postgres(dsn: str | None = None, *, pooler: str | None = None
                            ) -> AsyncIterator[PostgresCluster]:
    """Postgres for the embedded stack; with ``pooler="pgbouncer"``, a PgBouncer in
    transaction pooling mode in front of it (``cluster.pooler``), which every reference
    service started on the cluster then reaches its database through (``reference_service``).
    Raises ``PoolerUnavailable`` (a ``PostgresUnavailable``: exit 4) naming the package when
    the pooler's binary is missing."""
    if pooler is not None and pooler not in POOLERS:
        raise ValueError(f"unknown pooler {pooler!r}; choose from {', '.join(POOLERS)}")
    if pooler is not None:
        await trio.to_thread.run_sync(find_pgbouncer)  # before Postgres: fail fast, naming it
    cluster = await trio.to_thread.run_sync(provision, dsn)
    bouncer: PgBouncer | None = None
    try:
        if pooler is not None:
            bouncer = await trio.to_thread.run_sync(start_pgbouncer, cluster)
            cluster.pooler = bouncer
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            cluster.pooler = None
            if bouncer is not None:
                await trio.to_thread.run_sync(bouncer.close)
            await trio.to_thread.run_sync(cluster.close)


def _service_database(cluster: PostgresCluster) -> tuple[str, str | None]:
    """A fresh database for one service (name to drop after), or the DSN's own database when
    the server does not let us create one."""
    name = f"rh_{secrets.token_hex(6)}"
    try:
        dsn = cluster.create_database(name)
    except psycopg.Error:
        if cluster.source != "dsn":
            raise
        return cluster.dsn, None
    if cluster.restart_unavailable() is None:  # the harness may kill it: keep what it commits
        with psycopg.connect(cluster.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                sql.Identifier(name)))
    return dsn, name


@contextlib.asynccontextmanager
async def reference_service(cluster: PostgresCluster, provider_url: str, *,
                            faults: Sequence[str] = (), autonomous_runs: bool = False,
                            lease_s: float | None = None, instances: int = 1,
                            provider_timeout_s: float | None = None,
                            heartbeat_s: float | None = None,
                            server: str = "uvicorn",
                            ) -> AsyncIterator[EmbeddedService]:
    t0 = time.monotonic()
    dsn, db_name = await trio.to_thread.run_sync(_service_database, cluster)
    service = EmbeddedService(dsn=dsn, token=secrets.token_urlsafe(18),
                              other_token=secrets.token_urlsafe(18),
                              admin_dsn=None if db_name is None else cluster.dsn,
                              db_name=db_name, cluster=cluster)
    lease = lease_s if lease_s is not None else 10.0
    env = {**os.environ, **_database_env(cluster, dsn, db_name),
           "PROVIDER_BASE_URL": provider_url,
           "REFERENCE_FAULTS": ",".join(faults),
           "REFERENCE_TOKENS": f"{service.token},{service.other_token}",
           "REFERENCE_PARENT_PID": str(os.getpid()),  # the reference exits if we die
           "REFERENCE_SERVER": server,  # hypercorn speaks HTTP/2 (h2c and TLS ALPN)
           "AUTONOMOUS_RUNS": "true" if autonomous_runs else "false",
           "HEARTBEAT_INTERVAL_S": str(heartbeat_s or min(1.0, lease / 3)), "LEASE_S": str(lease),
           # the reaper as often as the heartbeat when a scenario sets one (long-hold)
           "REAPER_INTERVAL_S": str(heartbeat_s or min(2.0, lease / 2)), "POOL_MAX_SIZE": "10",
           **({"PROVIDER_READ_TIMEOUT_S": str(provider_timeout_s)} if provider_timeout_s
              else {})}
    try:
        try:
            for k in range(instances):
                service.instances.append(await _start_process(
                    {**env, "INSTANCE_ID": f"embedded-{k}"}, free_port()))
            log.info("embedded reference ready (%d instance%s) in %.2fs%s%s", instances,
                     "" if instances == 1 else "s", time.monotonic() - t0,
                     f" through {cluster.pooler.name}" if cluster.pooler else "",
                     f" (FAULTS: {', '.join(faults)})" if faults else "")
            yield service
        finally:
            with trio.CancelScope(shield=True):
                lost: PostgresUnavailable | None = None
                if service.database_is_down or service.postgres_is_down \
                        or service._held is not None or service._prepared is not None:
                    lost = await trio.to_thread.run_sync(_give_back, service)
                for instance in service.instances:
                    await _stop_process(instance)
                if lost is not None:  # the cluster did not come back: nothing more runs on it
                    raise lost
    finally:
        if db_name is not None and not service.postgres_is_down:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(cluster.drop_database, db_name)


def _database_env(cluster: PostgresCluster, dsn: str, db_name: str | None) -> dict[str, str]:
    """How the reference reaches its database: ``dsn`` itself, or through the cluster's
    pooler (transaction pooling: nothing prepared, no session state), with the stop listener's
    one session connection straight to Postgres (``LISTEN_DSN``). The harness's own
    connections (``service.dsn``: observations, outage controls) never use the pooler."""
    if cluster.pooler is None:
        return {"DATABASE_URL": dsn, "DATABASE_POOLER": "none", "LISTEN_DSN": ""}
    name = db_name if db_name is not None else str(conninfo_to_dict(dsn).get("dbname") or "")
    return {"DATABASE_URL": cluster.pooler.dsn_for(name), "DATABASE_POOLER": "transaction",
            "LISTEN_DSN": dsn}


def _give_back(service: EmbeddedService) -> PostgresUnavailable | None:
    """An outage a run left behind ends before the service stops (best effort); a stopped
    cluster that does not start again is returned, for the caller to raise (exit 4)."""
    try:
        if service.postgres_is_down:
            service.postgres_start()
        service.release_gate()
        if service.database_is_down:
            service.database_up()
    except PostgresUnavailable as exc:
        return exc
    except (psycopg.Error, DatabaseControlError):
        log.exception("could not give the service's database back")
    return None


async def _start_process(env: dict[str, str], port: int) -> Instance:
    log_file = tempfile.NamedTemporaryFile(prefix="raceharness-reference-", suffix=".log",
                                           delete=False)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "raceharness.reference", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _LIVE.add(proc)
    log_file.close()
    instance = Instance(f"http://127.0.0.1:{port}", port, env, proc, log_file.name)
    try:
        await _wait_ready(instance.url, proc, log_file.name)
    except BaseException:
        with trio.CancelScope(shield=True):
            await _stop_process(instance)
        raise
    return instance


async def _stop_process(instance: Instance) -> None:
    await _terminate(instance.process)
    _LIVE.discard(instance.process)
    if not os.environ.get("HARNESS_KEEP_LOGS"):
        with contextlib.suppress(OSError):
            os.unlink(instance.log_path)


async def _wait_ready(url: str, proc: trio.Process, log_path: str) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        with trio.move_on_after(READY_TIMEOUT_S):
            while proc.returncode is None:
                try:
                    if (await client.get(url + "/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)  # a readiness probe of another process: nothing to await
    raise EmbeddedStartError(
        f"the reference server did not become ready (exit code {proc.returncode}); "
        f"its log ends with:\n{_tail(log_path)}")


async def _terminate(proc: trio.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(10):
        await proc.wait()
        return
    proc.kill()
    await proc.wait()


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return "(no log)"
