"""Serving the reference app with uvicorn (httptools + uvloop), SIGTERM-safe.

On SIGTERM/SIGINT the instance first ends its own runs as ``aborted`` (their streams get an
``abort`` frame), then uvicorn closes connections and the lifespan closes the pool.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

import uvicorn

from reference.app import create_app
from reference.auth import ensure_user_sync
from reference.faults import VALID_FAULTS, UnknownFaultError, parse_faults
from reference.schema import apply_schema_sync
from reference.settings import Settings, SettingsError

log = logging.getLogger("reference")


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reference``: serve with settings from the environment (DATABASE_URL, ...)."""
    parser = argparse.ArgumentParser(prog="python -m reference", description=(
        "Serve the reference AI-chat server. Settings come from the environment "
        "(DATABASE_URL, PROVIDER_BASE_URL, PROVIDER_API_KEY, AUTONOMOUS_RUNS, REFERENCE_FAULTS, "
        "HEARTBEAT_INTERVAL_S, LEASE_S, ...)."))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--fault", action="append", default=[], metavar="NAME",
                        help=f"enable a fault switch (one of: {', '.join(VALID_FAULTS)})")
    parser.add_argument("--ssl-certfile", help="serve https with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN",
                        help="create a user holding this bearer token (repeatable); "
                             "REFERENCE_TOKENS=a,b works too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = (Settings.from_env(faults=parse_faults(args.fault)) if args.fault
                    else Settings.from_env())
    except (SettingsError, UnknownFaultError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tokens = [*args.token, *filter(None, os.environ.get("REFERENCE_TOKENS", "").split(","))]
    if tokens:
        apply_schema_sync(settings.database_url, settings.faults)
        for i, token in enumerate(tokens):
            ensure_user_sync(settings.database_url, f"user{i}", token)
    build_server(settings, args.host, args.port, ssl_certfile=args.ssl_certfile,
                 ssl_keyfile=args.ssl_keyfile).run()
    return 0
