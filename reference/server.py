"""Serving the reference app, SIGTERM-safe: uvicorn (httptools + uvloop, HTTP/1.1; the
default) or hypercorn (asyncio + uvloop; HTTP/2 as well as HTTP/1.1).

On SIGTERM/SIGINT the instance first ends its own runs as ``aborted`` (their streams get an
``abort`` frame), then the server closes connections and the lifespan closes the pool.

hypercorn speaks HTTP/2 on plain TCP with prior knowledge (h2c: a connection opening with the
HTTP/2 preface is switched to HTTP/2; others stay HTTP/1.1) and, with a certificate, over TLS
by ALPN (``h2``, ``http/1.1``). ``--h2-max-concurrent-streams`` sets the
``SETTINGS_MAX_CONCURRENT_STREAMS`` it announces (default 100).

``python -m raceharness.reference`` exits 0 after a clean shutdown, 2 on a bad flag or setting
(naming the variable or flag and the value), and 4 when the database at ``DATABASE_URL``
cannot be reached at start-up: one line naming its host, port and database, never the
password, instead of the lifespan's traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import uvicorn
from psycopg.conninfo import conninfo_to_dict

from raceharness.reference.app import create_app
from raceharness.reference.auth import ensure_user_sync
from raceharness.reference.faults import VALID_FAULTS, UnknownFaultError, parse_faults
from raceharness.reference.schema import apply_schema_sync
from raceharness.reference.settings import DATABASE_POOLERS, Settings, SettingsError

log = logging.getLogger("reference")

SERVERS = ("uvicorn", "hypercorn")
DEFAULT_H2_MAX_CONCURRENT_STREAMS = 100  # hypercorn's default
EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 4  # the harness's codes for the same cases
CONNECT_TIMEOUT_S = 5


class DatabaseUnreachable(Exception):
    """The database at ``DATABASE_URL`` refused or did not answer (the message names where,
    never the password)."""


def describe_database(dsn: str) -> str:
    """``host:port/dbname`` of a libpq DSN (URL or key=value), with libpq's defaults; no user,
    no password. Raises ``SettingsError`` for a DSN libpq cannot parse."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise SettingsError("DATABASE_URL: not a valid libpq connection string") from None
    host = parts.get("host") or parts.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = parts.get("port") or os.environ.get("PGPORT") or 5432
    return f"{host}:{port}/{parts.get('dbname') or os.environ.get('PGDATABASE') or '(default)'}"


def check_database(dsn: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect once, so that an unreachable database stops the start-up with one line
    (``DatabaseUnreachable``) rather than a traceback from the lifespan."""
    where = describe_database(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s))):
            pass
    except psycopg.Error as exc:
        raise DatabaseUnreachable(f"cannot reach the database at {where} (DATABASE_URL): "
                                  f"{_reason(exc, dsn)}") from None


def _reason(exc: BaseException, dsn: str) -> str:
    """libpq's reason on one line ("Connection refused"), without the host and port it
    repeats and without the password, should libpq ever quote it."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = line.rsplit(" failed: ", 1)[-1].strip() or line
    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        password = ""
    return line.replace(password, "***") if password else line


class ReferenceServer(uvicorn.Server):
    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        runtime = getattr(self.config.loaded_app, "state", None)
        app = self.config.loaded_app
        while runtime is None and hasattr(app, "app"):  # unwrap uvicorn's middleware
            app = app.app
            runtime = getattr(app, "state", None)
        rt = getattr(runtime, "runtime", None)
        if rt is not None:
            await rt.registry.abort_all("server shutting down")
        await super().shutdown(sockets)


class ForegroundServer(ReferenceServer):
    """For a command that owns the process: after a clean shutdown on Ctrl-C/SIGTERM, return
    normally instead of re-raising the signal (uvicorn's default), so the caller can finish
    its own cleanup and exit 0 without a KeyboardInterrupt traceback."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def build_server(settings: Settings, host: str, port: int, *, access_log: bool = False,
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                 server_class: type[ReferenceServer] = ReferenceServer) -> ReferenceServer:
    app = create_app(settings)
    cfg = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools",
                         lifespan="on", access_log=access_log, log_level="info",
                         timeout_graceful_shutdown=int(settings.stop_wait_s) + 1,
                         backlog=4096, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    return server_class(cfg)


# -- hypercorn ---------------------------------------------------------------------------------

def hypercorn_config(host: str, port: int, *, graceful_timeout_s: float,
                     ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                     h2_max_concurrent_streams: int = DEFAULT_H2_MAX_CONCURRENT_STREAMS,
                     access_log: bool = False) -> Any:
    """A hypercorn ``Config``: h2c prior knowledge and HTTP/1.1 on plain TCP; with a
    certificate, TLS with ALPN ``h2`` and ``http/1.1``."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.certfile = ssl_certfile
    config.keyfile = ssl_keyfile
    config.alpn_protocols = ["h2", "http/1.1"]
    config.h2_max_concurrent_streams = h2_max_concurrent_streams
    config.graceful_timeout = graceful_timeout_s
    config.backlog = 4096
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = logging.getLogger("hypercorn.access") if access_log else None
    return config


async def serve_hypercorn(app: Any, config: Any, shutdown: asyncio.Event) -> None:
    """Serve ``app`` until ``shutdown`` is set; then the instance aborts its own runs first,
    and only then does hypercorn stop accepting, drain connections and run the lifespan's
    shutdown."""
    from hypercorn.asyncio import serve

    async def trigger() -> None:
        await shutdown.wait()
        rt = getattr(app.state, "runtime", None)
        if rt is not None:
            await rt.registry.abort_all("server shutting down")

    await serve(app, config, shutdown_trigger=trigger)


def run_hypercorn(settings: Settings, host: str, port: int, *,
                  ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                  h2_max_concurrent_streams: int = DEFAULT_H2_MAX_CONCURRENT_STREAMS,
                  access_log: bool = False) -> None:
    """Serve the reference with hypercorn on uvloop (when installed) until SIGTERM/SIGINT."""
    app = create_app(settings)
    config = hypercorn_config(host, port, graceful_timeout_s=settings.stop_wait_s + 1,
                              ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                              h2_max_concurrent_streams=h2_max_concurrent_streams,
                              access_log=access_log)

    async def serve_until_signalled() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, shutdown.set)
        try:
            await serve_hypercorn(app, config, shutdown)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loop_factory = uvloop.new_event_loop
    log.info("serving with hypercorn on %s (%s; SETTINGS_MAX_CONCURRENT_STREAMS=%d)",
             "uvloop" if loop_factory else "asyncio",
             "TLS, ALPN h2 and http/1.1" if ssl_certfile else "h2c prior knowledge and HTTP/1.1",
             h2_max_concurrent_streams)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_until_signalled())


# -- the command -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m raceharness.reference``: serve with settings from the environment
    (DATABASE_URL, ...)."""
    parser = argparse.ArgumentParser(prog="python -m raceharness.reference", description=(
        "Serve the reference AI-chat server. Settings come from the environment "
        "(DATABASE_URL, PROVIDER_BASE_URL, PROVIDER_API_KEY, AUTONOMOUS_RUNS, REFERENCE_FAULTS, "
        "HEARTBEAT_INTERVAL_S, LEASE_S, ..., DATABASE_POOLER and LISTEN_DSN, and "
        "REFERENCE_SERVER for --server). Behind a transaction pooler (PgBouncer "
        "pool_mode=transaction) set DATABASE_POOLER=transaction (no prepared statements, no "
        "session state) and LISTEN_DSN to a direct connection to Postgres for the stop "
        "listener (or STOP_NOTIFY=false: stops then arrive with the heartbeat poll)."), epilog=(
        "Exit codes: 0 stopped cleanly, 2 a bad flag or setting, 4 the database at "
        "DATABASE_URL unreachable at start-up (one line naming host, port and database)."))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--fault", action="append", default=[], metavar="NAME",
                        help=f"enable a fault switch (one of: {', '.join(VALID_FAULTS)})")
    parser.add_argument("--server", choices=SERVERS, default=None,
                        help="the HTTP server: uvicorn (HTTP/1.1 only; the default) or "
                             "hypercorn (HTTP/2 too: h2c with prior knowledge on plain TCP, "
                             "ALPN h2 over TLS, and HTTP/1.1); REFERENCE_SERVER=hypercorn "
                             "works too")
    parser.add_argument("--h2-max-concurrent-streams", type=int, default=None, metavar="N",
                        help="the SETTINGS_MAX_CONCURRENT_STREAMS hypercorn announces on "
                             f"HTTP/2 connections (default {DEFAULT_H2_MAX_CONCURRENT_STREAMS}); "
                             "needs --server hypercorn")
    parser.add_argument("--ssl-certfile", help="serve https with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--database-pooler", choices=DATABASE_POOLERS, default=None,
                        help="what DATABASE_URL reaches: none (Postgres itself; the default) or "
                             "transaction (a transaction pooler such as PgBouncer: nothing is "
                             "prepared, no session state is kept, and LISTEN goes to "
                             "LISTEN_DSN, a direct connection); DATABASE_POOLER=... works too")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN",
                        help="create a user holding this bearer token (repeatable); "
                             "REFERENCE_TOKENS=a,b works too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    if args.database_pooler:
        overrides["database_pooler"] = args.database_pooler
    try:
        if args.fault:
            overrides["faults"] = parse_faults(args.fault)
        settings = Settings.from_env(**overrides)
    except (SettingsError, UnknownFaultError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = args.server or os.environ.get("REFERENCE_SERVER", "").strip() or "uvicorn"
    if server not in SERVERS:
        print(f"error: REFERENCE_SERVER: expected one of {', '.join(SERVERS)}, got {server!r}",
              file=sys.stderr)
        return 2
    streams = args.h2_max_concurrent_streams
    if streams is not None and server != "hypercorn":
        print("error: --h2-max-concurrent-streams: needs --server hypercorn (uvicorn speaks "
              "HTTP/1.1 only)", file=sys.stderr)
        return 2
    if streams is not None and streams < 1:
        print(f"error: --h2-max-concurrent-streams: must be >= 1, got {streams}",
              file=sys.stderr)
        return 2
    tokens = [*args.token, *filter(None, os.environ.get("REFERENCE_TOKENS", "").split(","))]
    try:
        check_database(settings.database_url)
        if tokens:
            apply_schema_sync(settings.database_url, settings.faults)
            for i, token in enumerate(tokens):
                ensure_user_sync(settings.database_url, f"user{i}", token)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except psycopg.OperationalError as exc:  # it went away between the check and the set-up
        print(f"error: the database at {describe_database(settings.database_url)} "
              f"(DATABASE_URL) failed during set-up: {_reason(exc, settings.database_url)}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    if server == "hypercorn":
        run_hypercorn(settings, args.host, args.port, ssl_certfile=args.ssl_certfile,
                      ssl_keyfile=args.ssl_keyfile,
                      h2_max_concurrent_streams=streams or DEFAULT_H2_MAX_CONCURRENT_STREAMS)
        return EXIT_OK
    build_server(settings, args.host, args.port, ssl_certfile=args.ssl_certfile,
                 ssl_keyfile=args.ssl_keyfile).run()
    return EXIT_OK
