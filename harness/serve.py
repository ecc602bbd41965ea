"""``harness serve-reference``: Postgres, a user, a provider and the reference, until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from harness.postgres import PostgresCluster, provision, redact_dsn
from harness.stub_provider import create_stub_provider
from reference.auth import ensure_user_sync
from reference.faults import Fault
from reference.schema import apply_schema_sync
from reference.server import build_server
from reference.settings import Settings

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


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the main (reference) server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prepare_database(cluster: PostgresCluster, own_cluster: bool, faults: frozenset[Fault]) -> str:
    """The DSN the reference uses: a fresh database on our own cluster, or the user's as given."""
    dsn = cluster.create_database("reference") if own_cluster else cluster.dsn
    apply_schema_sync(dsn, faults)
    return dsn


async def _serve(opts: ServeOptions, dsn: str, token: str) -> None:
    provider_url = opts.provider_url
    servers: list[uvicorn.Server] = []
    if provider_url is None:
        stub_port = free_port(opts.host)
        provider_url = f"http://{opts.host}:{stub_port}/v1"
        servers.append(QuietServer(uvicorn.Config(
            create_stub_provider(), host=opts.host, port=stub_port, log_level="warning",
            access_log=False, lifespan="off")))
    settings = Settings(database_url=dsn, provider_base_url=provider_url,
                        autonomous_runs=opts.autonomous_runs, faults=opts.faults,
                        lease_s=opts.lease_s, heartbeat_interval_s=opts.heartbeat_interval_s,
                        reaper_interval_s=max(opts.heartbeat_interval_s, opts.lease_s / 3))
    ensure_user_sync(dsn, "harness-user", token)
    reference = build_server(settings, opts.host, opts.port)
    servers.append(reference)
    url = f"http://{opts.host}:{opts.port}"

    async def announce() -> None:
        while not reference.started:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.05)
        print(f"reference server: {url}  (provider: {provider_url}, database: {redact_dsn(dsn)})",
              flush=True)
        if opts.faults:
            print(f"FAULTS ENABLED: {', '.join(sorted(f.value for f in opts.faults))}", flush=True)
        print("try:", flush=True)
        print(f"  curl -N -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' "
              f"-d '{{\"messages\":[{{\"role\":\"user\",\"parts\":[{{\"type\":\"text\","
              f"\"text\":\"hi\"}}]}}]}}' {url}/api/ai-chat/stream", flush=True)
        print("Ctrl-C stops it and removes everything it started.", flush=True)

    stubs = servers[:-1]
    tasks = [asyncio.create_task(s.serve()) for s in stubs]
    asyncio.create_task(announce())
    try:
        await reference.serve()
    finally:
        for stub in stubs:
            stub.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def serve_reference(opts: ServeOptions) -> int:
    token = opts.token
    if token is None:
        token = secrets.token_urlsafe(18)
        print(f"generated bearer token: {token}", flush=True)
    with provision(opts.dsn) as cluster:
        dsn = prepare_database(cluster, cluster.source != "dsn", opts.faults)
        try:
            import uvloop
            uvloop.run(_serve(opts, dsn, token))
        except KeyboardInterrupt:
            pass
    print("stopped; everything it started is gone.", file=sys.stderr)
    return 0
