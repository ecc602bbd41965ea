"""The ``harness`` command line.

Exit codes (conformance.md §5): 0 all valid, 1 a property invalid, 2 usage or configuration
error, 3 inconclusive, 4 target or environment unreachable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from reference.faults import VALID_FAULTS

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_UNKNOWN, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


def _fault_name(value: str) -> str:
    if value not in VALID_FAULTS:
        raise argparse.ArgumentTypeError(
            f"unknown fault {value!r}; valid faults: {', '.join(VALID_FAULTS)}")
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port: expected an integer, got {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"--port: expected 1-65535, got {port}")
    return port


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Race-testing and conformance harness for AI-chat services that allow "
                    "one active run per chat.",
        epilog="Exit codes: 0 valid, 1 invalid, 2 usage error, 3 inconclusive, 4 unreachable.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve-reference",
        help="run the reference server (with its own Postgres) until interrupted",
        description="Run the reference server for manual use: Postgres (embedded unless --dsn), "
                    "a user whose bearer token is --token, and a stub provider unless "
                    "--provider-url. Prints the URL and stays up until Ctrl-C.")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8787, help="listen port (default 8787)")
    serve.add_argument("--token", default=os.environ.get("HARNESS_TOKEN"),
                       help="bearer token of the user to create (env HARNESS_TOKEN; default: "
                            "a generated one, printed)")
    serve.add_argument("--dsn", default=os.environ.get("HARNESS_DSN"),
                       help="use this Postgres database instead of an embedded one (env "
                            "HARNESS_DSN); the schema is created in it if missing")
    serve.add_argument("--fault", action="append", type=_fault_name, default=[], metavar="NAME",
                       help=f"enable a known bug (repeatable): {', '.join(VALID_FAULTS)}")
    serve.add_argument("--provider-url", help="OpenAI-compatible base URL, e.g. "
                       "http://127.0.0.1:9000/v1 (default: a built-in stub provider)")
    serve.add_argument("--autonomous-runs", action="store_true",
                       help="a client disconnect lets the run finish (AUTONOMOUS_RUNS=true)")
    serve.add_argument("--lease-s", type=_positive, default=30.0, help="run lease (default 30)")
    serve.add_argument("--heartbeat-s", type=_positive, default=5.0,
                       help="lease renewal interval (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve-reference":
        return _serve_reference(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


def _serve_reference(args: argparse.Namespace) -> int:
    from harness.postgres import PostgresUnavailable
    from harness.serve import ServeOptions, serve_reference
    from reference.faults import parse_faults
    from reference.settings import SettingsError

    if args.lease_s <= args.heartbeat_s:
        print(f"harness: --lease-s ({args.lease_s}) must exceed --heartbeat-s "
              f"({args.heartbeat_s})", file=sys.stderr)
        return EXIT_USAGE
    opts = ServeOptions(host=args.host, port=args.port, token=args.token, dsn=args.dsn,
                        faults=parse_faults(args.fault), provider_url=args.provider_url,
                        autonomous_runs=args.autonomous_runs, lease_s=args.lease_s,
                        heartbeat_interval_s=args.heartbeat_s)
    try:
        return serve_reference(opts)
    except PostgresUnavailable as exc:
        print(f"harness: Postgres unavailable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except SettingsError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
