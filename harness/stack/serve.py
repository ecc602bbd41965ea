"""``harness serve-reference``: Postgres, a user, a provider and the reference, until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import trio
from psycopg.conninfo import conninfo_to_dict

from raceharness.reference.auth import ensure_user_sync
from raceharness.reference.faults import Fault
from raceharness.reference.schema import apply_schema_sync
from raceharness.reference.server import ForegroundServer, build_server
from raceharness.reference.settings import Settings
from raceharness.runtime import EXIT_UNREACHABLE
from raceharness.shell.fake_provider import FakeProvider
from raceharness.stack.pooler import PoolerUnavailable, find_pgbouncer, start_pgbouncer
from raceharness.stack.postgres import PostgresCluster, provision, redact_dsn

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    host: str
    port: int
    token: str | None
    dsn: str | None
    faults: frozenset[Fault]
    provider_url: str | None
    autonomous_runs: bool
    lease_s: float
    heartbeat_interval_s: float
    pooler: str | None = None  # "pgbouncer": serve through PgBouncer (transaction pooling)


class ProviderThread:
    """The harness's fake provider (trio) in a thread beside the asyncio reference server.

    It streams five tokens 0.1 s apart, so a turn stays active long enough to race by hand.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.provider = FakeProvider(token_interval_s=0.1)
        self._ready = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True,
                                        name="fake-provider")

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self._token = trio.lowlevel.current_trio_token()
            await nursery.start(self.provider.serve, self.host, 0)
            self._ready.set()

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake provider did not start")
        return self.provider.base_url

    def stop(self) -> None:
        if self._scope is not None and self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(5)


def prepare_database(cluster: PostgresCluster, own_cluster: bool, faults: frozenset[Fault]) -> str:
    """The DSN the reference uses: a fresh database on our own cluster, or the user's as given."""
    dsn = cluster.create_database("reference") if own_cluster else cluster.dsn
    apply_schema_sync(dsn, faults)
    return dsn


TOKEN_VARIABLE = "HARNESS_TOKEN"  # what the harness's --token reads by default
TRY_BODY = '{"messages":[{"role":"user","parts":[{"type":"text","text":"hi"}]}]}'


def try_hint(url: str, token: str, generated: bool,
             environ: Mapping[str, str] | None = None) -> list[str]:
    """The lines that show how to call the server by hand. The curl line reads the token from
    ``$HARNESS_TOKEN``, the variable ``--token`` (here and on ``harness race --target``)
    defaults to. A generated token is exported first; a token given with ``--token`` is never
    printed, so the hint says to set the variable to it, unless the shell already holds it."""
    env = os.environ if environ is None else environ
    lines = ["try:"]
    if generated:
        lines.append(f"  export {TOKEN_VARIABLE}={shlex.quote(token)}   # the generated token")
    elif env.get(TOKEN_VARIABLE) != token:
        lines.append(f"  # set {TOKEN_VARIABLE} to the token given with --token (not printed)")
    lines.append(f'  curl -N -H "Authorization: Bearer ${TOKEN_VARIABLE}" '
                 f"-H 'content-type: application/json' -d '{TRY_BODY}' {url}/api/ai-chat/stream")
    return lines


async def _serve(opts: ServeOptions, dsn: str, token: str, provider_url: str,
                 generated: bool = False, pooled_dsn: str | None = None,
                 pooler_name: str = "") -> None:
    """Serve on ``dsn``, or through a transaction pooler at ``pooled_dsn`` (no prepared
    statements, no session state) with the stop listener on ``dsn`` (a session of its own,
    straight to Postgres: a LISTEN does not outlive its transaction behind the pooler)."""
    settings = Settings(database_url=pooled_dsn or dsn, provider_base_url=provider_url,
                        autonomous_runs=opts.autonomous_runs, faults=opts.faults,
                        lease_s=opts.lease_s, heartbeat_interval_s=opts.heartbeat_interval_s,
                        reaper_interval_s=max(opts.heartbeat_interval_s, opts.lease_s / 3),
                        database_pooler="transaction" if pooled_dsn else "none",
                        listen_dsn=dsn if pooled_dsn else "")
    ensure_user_sync(dsn, "harness-user", token)
    reference = build_server(settings, opts.host, opts.port, server_class=ForegroundServer)
    url = f"http://{opts.host}:{opts.port}"

    async def announce() -> None:
        while not reference.started:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.05)
        through = f" through {pooler_name} at {redact_dsn(pooled_dsn)}" if pooled_dsn else ""
        print(f"reference server: {url}  (provider: {provider_url}, database: {redact_dsn(dsn)}"
              f"{through})", flush=True)
        if opts.faults:
            print(f"FAULTS ENABLED: {', '.join(sorted(f.value for f in opts.faults))}", flush=True)
        for line in try_hint(url, token, generated):
            print(line, flush=True)
        print("Ctrl-C stops it and removes everything it started.", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await reference.serve()
    finally:
        announcer.cancel()


def serve_reference(opts: ServeOptions) -> int:
    token = opts.token
    generated = token is None
    if token is None:
        token = secrets.token_urlsafe(18)
        print(f"bearer token (generated, since neither --token nor {TOKEN_VARIABLE} was "
              f"given): {token}", flush=True)
    if opts.pooler is not None:
        try:
            find_pgbouncer()  # before Postgres: a missing package is said at once
        except PoolerUnavailable as exc:
            print(f"harness: PgBouncer unavailable: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
    with provision(opts.dsn) as cluster, contextlib.ExitStack() as stack:
        dsn = prepare_database(cluster, cluster.source != "dsn", opts.faults)
        pooled_dsn, pooler_name = None, ""
        if opts.pooler is not None:
            try:
                bouncer = stack.enter_context(start_pgbouncer(cluster))
            except PoolerUnavailable as exc:
                print(f"harness: PgBouncer unavailable: {exc}", file=sys.stderr)
                return EXIT_UNREACHABLE
            pooled_dsn = bouncer.dsn_for(_dbname(dsn))
            pooler_name = bouncer.name
        provider = None if opts.provider_url else ProviderThread(opts.host)
        try:
            provider_url = opts.provider_url or provider.start()  # type: ignore[union-attr]
            import uvloop
            uvloop.run(_serve(opts, dsn, token, provider_url, generated, pooled_dsn,
                              pooler_name))
        except KeyboardInterrupt:
            pass
        finally:
            if provider is not None:
                provider.stop()
    print("stopped; everything it started is gone.", file=sys.stderr)
    return 0


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname") or "postgres")
