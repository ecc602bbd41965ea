"""PgBouncer in transaction pooling mode in front of a Postgres the harness uses
(``--pooler pgbouncer``): the topology of many production deployments, where every transaction
may run on another server connection and no session state survives between transactions.

``start_pgbouncer(cluster)`` starts the Debian package's binary (``pgbouncer``; usually
``/usr/sbin/pgbouncer``) on a free loopback port, with its config, auth file, pid file and log in
a temp dir under /tmp, and removes all of it on ``close()``, at interpreter exit, and (through a
watchdog, as the cluster does) even if this process is SIGKILLed. As root it runs as the same
unprivileged user as the cluster (``runuser``): PgBouncer refuses to run as root.

- ``pool_mode = transaction``; ``[databases] *``: any database name is served from the cluster,
  as the cluster's user, so the per-service databases the harness creates need no reload.
- Clients authenticate with ``trust`` (loopback only; the user must be in the auth file, which
  also holds the cluster's password, if any, for PgBouncer's own server logins).
- ``server_login_retry`` is short, so once a database that was taken away is back the pooler
  reconnects within a fraction of a second instead of PgBouncer's default 15 s, and
  ``query_wait_timeout`` bounds how long a query waits for a server connection (during an
  outage PgBouncer queues it rather than failing it): the client is then disconnected, which
  the reference answers as a database failure (503), as it does a pool timeout when direct.

The harness's own connections (observations, the outage controls, the set-up) never go through
the pooler: only the service under test does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from raceharness.stack.postgres import (
    PostgresCluster,
    PostgresUnavailable,
    _alive,
    _free_port,
    _run_as,
    _SourceFailed,
    end_process,
    remove_with_watchdog,
    start_watchdog,
)

log = logging.getLogger(__name__)

POOLERS: tuple[str, ...] = ("pgbouncer",)
PGBOUNCER_PACKAGE = "pgbouncer"
INSTALL_HINT = ("install PgBouncer: apt-get install pgbouncer (Debian/Ubuntu; ./run.sh installs "
                "it by itself when run as root), or set HARNESS_PGBOUNCER to its binary")
_SEARCH = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer",
           "/usr/bin/pgbouncer")
READY_TIMEOUT_S = 15.0
DEFAULT_POOL_SIZE = 20           # server connections per database (several instances share it)
QUERY_WAIT_TIMEOUT_S = 3         # under the reference's POOL_TIMEOUT_S default (5)
SERVER_LOGIN_RETRY_S = 0.25


class PoolerUnavailable(PostgresUnavailable):
    """The pooler could not be started: its binary is missing (the message names the package
    to install) or it did not come up (the message has its log's tail). A kind of
    ``PostgresUnavailable``: the service's database cannot be reached as asked (exit 4)."""


def find_pgbouncer() -> str:
    """The PgBouncer binary: ``HARNESS_PGBOUNCER``, else ``PATH``, else the usual places (the
    Debian package puts it in /usr/sbin, which a non-root ``PATH`` often lacks)."""
    given = os.environ.get("HARNESS_PGBOUNCER")
    if given:
        if os.path.isfile(given) and os.access(given, os.X_OK):
            return given
        raise PoolerUnavailable(f"HARNESS_PGBOUNCER={given} is not an executable file; "
                                f"{INSTALL_HINT}")
    found = shutil.which("pgbouncer")
    if found:
        return found
    for path in _SEARCH:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise PoolerUnavailable(f"no PgBouncer binary (looked in PATH and {', '.join(_SEARCH)}); "
                            f"{INSTALL_HINT}")


def pgbouncer_version(binary: str) -> str:
    """``1.18.0`` for PgBouncer 1.18.0 (from ``pgbouncer --version``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    match = re.search(r"PgBouncer\s+(\d+(?:\.\d+)*)", out)
    return match.group(1) if match else "unknown"


@dataclass
class PgBouncer:
    """A running PgBouncer in transaction pooling mode in front of one Postgres server."""

    port: int
    user: str
    version: str
    upstream: str        # host:port of the server it pools, for the log
    tempdir: str
    host: str = "127.0.0.1"
    mode: str = "transaction"
    _finalizer: Callable[[], object] | None = field(
        default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"PgBouncer {self.version} (pool_mode={self.mode})"

    def dsn_for(self, dbname: str) -> str:
        """A DSN for database ``dbname`` through the pooler (no password: trust on loopback)."""
        return (f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/"
                f"{quote(dbname, safe='')}")

    @property
    def log_path(self) -> Path:
        return Path(self.tempdir) / "pgbouncer.log"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop PgBouncer and remove its files. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _conn_value(value: str) -> str:
    """A value of a PgBouncer connect string, quoted as libpq does."""
    if value and re.fullmatch(r"[A-Za-z0-9_.:/\-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _auth_line(user: str, password: str) -> str:
    def q(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'
    return f"{q(user)} {q(password)}\n"


def _config(tempdir: Path, port: int, upstream: dict[str, str], pool_size: int,
            query_wait_timeout_s: int) -> str:
    target = " ".join(f"{k}={_conn_value(v)}" for k, v in (
        ("host", upstream["host"]), ("port", upstream["port"]), ("user", upstream["user"])))
    return f"""\
[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tempdir / "userlist.txt"}
admin_users = {upstream["user"]}
pool_mode = transaction
default_pool_size = {int(pool_size)}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
server_login_retry = {SERVER_LOGIN_RETRY_S}
server_connect_timeout = 5
query_wait_timeout = {int(query_wait_timeout_s)}
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = {tempdir / "pgbouncer.log"}
pidfile = {tempdir / "pgbouncer.pid"}
"""


def _upstream(cluster: PostgresCluster) -> dict[str, str]:
    parts = conninfo_to_dict(cluster.dsn)
    host = str(parts.get("host") or parts.get("hostaddr") or "127.0.0.1")
    if "," in host:
        raise PoolerUnavailable("the pooler needs a DSN naming one host, got several")
    return {"host": host, "port": str(parts.get("port") or 5432),
            "user": str(parts.get("user") or pwd.getpwuid(os.geteuid()).pw_name),
            "password": str(parts.get("password") or "")}


def _read_pid(tempdir: Path) -> int | None:
    try:
        return int((tempdir / "pgbouncer.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _stop(tempdir: Path, watchdog: subprocess.Popen[bytes]) -> None:
    pid = _read_pid(tempdir)
    if pid is not None:
        end_process(pid, signal.SIGTERM)
    remove_with_watchdog(tempdir, watchdog)


def start_pgbouncer(cluster: PostgresCluster, *, pool_size: int = DEFAULT_POOL_SIZE,
                    query_wait_timeout_s: int = QUERY_WAIT_TIMEOUT_S) -> PgBouncer:
    """Start PgBouncer (transaction pooling) in front of ``cluster``; see the module docstring.
    Raises ``PoolerUnavailable`` naming the package when the binary is missing."""
    binary = find_pgbouncer()
    version = pgbouncer_version(binary)
    upstream = _upstream(cluster)
    try:
        user = _run_as()
    except _SourceFailed as exc:
        raise PoolerUnavailable(f"cannot run PgBouncer: {exc}") from None
    tempdir = Path(tempfile.mkdtemp(prefix="rh-pgbouncer-", dir="/tmp"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(tempdir, entry.pw_uid, entry.pw_gid)
    watchdog = start_watchdog(tempdir, "pgbouncer.pid", "TERM", "rh-pgbouncer-watchdog")
    bouncer = PgBouncer(port=0, user=upstream["user"], version=version,
                        upstream=f"{upstream['host']}:{upstream['port']}", tempdir=str(tempdir))
    bouncer._finalizer = weakref.finalize(bouncer, _stop, tempdir, watchdog)
    try:
        _write_private(tempdir / "userlist.txt", _auth_line(upstream["user"],
                                                            upstream["password"]), user)
        for attempt in range(3):
            bouncer.port = _free_port()
            config = tempdir / "pgbouncer.ini"
            _write_private(config, _config(tempdir, bouncer.port, upstream, pool_size,
                                           query_wait_timeout_s), user)
            (tempdir / "pgbouncer.log").unlink(missing_ok=True)  # a retry reads its own errors
            argv = [binary, "-d", "-q", str(config)]
            cmd = ["runuser", "-u", user, "--", *argv] if user else argv
            done = subprocess.run(cmd, cwd=str(tempdir), capture_output=True, text=True,
                                  timeout=30, start_new_session=True, check=False)
            try:
                _wait_ready(bouncer, done)
                break
            except PoolerUnavailable:
                tail = bouncer.log_tail()
                if attempt < 2 and ("Address already in use" in tail or "bind" in tail):
                    _kill_started(tempdir)
                    continue
                raise
    except BaseException:
        bouncer.close()
        raise
    log.info("%s on 127.0.0.1:%d in front of Postgres at %s", bouncer.name, bouncer.port,
             bouncer.upstream)
    return bouncer


def _write_private(path: Path, text: str, user: str | None) -> None:
    """A file only its owner (the user PgBouncer runs as) reads: it may hold a password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _kill_started(tempdir: Path) -> None:
    pid = _read_pid(tempdir)
    if pid is not None and _alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    (tempdir / "pgbouncer.pid").unlink(missing_ok=True)


def _wait_ready(bouncer: PgBouncer, done: subprocess.CompletedProcess[str]) -> None:
    """Until PgBouncer answers a login through itself (its admin console: no server needed)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    dsn = bouncer.dsn_for("pgbouncer")
    last = ""
    while time.monotonic() < deadline:
        if done.returncode != 0:
            break
        pid = _read_pid(Path(bouncer.tempdir))
        if pid is not None and not _alive(pid):
            break
        try:
            with socket.create_connection((bouncer.host, bouncer.port), timeout=1):
                pass
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2):
                pass  # a login is enough (the console speaks the simple protocol only)
            return
        except (OSError, psycopg.Error) as exc:
            last = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            time.sleep(0.05)  # another process starting: nothing to await
    out = (done.stderr or done.stdout or "").strip()[-500:]
    raise PoolerUnavailable(
        f"PgBouncer {bouncer.version} did not start on 127.0.0.1:{bouncer.port} "
        f"(exit {done.returncode}{'; ' + out if out else ''}; last try: {last or 'none'}); "
        f"its log ends with:\n{bouncer.log_tail().strip()}")
