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
from pathlib import Path

from reference.faults import VALID_FAULTS

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_UNKNOWN, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM: runs stopped, partial history kept


def _fault_name(value: str) -> str:
    if value not in VALID_FAULTS:
        raise argparse.ArgumentTypeError(
            f"unknown fault {value!r}; valid faults: {', '.join(VALID_FAULTS)}")
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected 1-65535, got {port}")
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
        epilog="Exit codes: 0 valid, 1 invalid, 2 usage error, 3 inconclusive, 4 unreachable, "
               "130 interrupted.")
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
    _add_race(sub)
    check = sub.add_parser("check", help="re-run the checkers on a saved history, offline",
                           description="Re-check a history.jsonl written by `harness race "
                                       "--report DIR`; prints the verdict table and exits with "
                                       "the verdict's code.")
    check.add_argument("history", help="path to history.jsonl")
    check.add_argument("--json", action="store_true", help="print report.json to stdout")
    return parser


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {number}")
    return number


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, _port(port)


MAX_N = 1000


def _add_race(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    race = sub.add_parser(
        "race", help="fire N simultaneous turns on one chat and check the properties",
        description="Fire N stream requests on one idle chat so that they truly arrive "
                    "together (last-byte synchronisation), hold the winner, stop it, and check "
                    "one-winner, losers-409, losers-fast, provider attribution, untracked runs, "
                    "loser writes, stoppability and release. Without --target it runs against "
                    "the embedded reference (Postgres, reference and fake provider started and "
                    "removed by the harness).",
        epilog="Exit codes: 0 all valid, 1 a property invalid, 2 usage error, 3 inconclusive, "
               "4 target or environment unreachable.")
    race.add_argument("--n", type=_count, default=50, help="simultaneous requests (default 50)")
    race.add_argument("--trials", type=_count, default=1, help="independent trials (default 1)")
    race.add_argument("--seed", type=int, help="seed of the first trial (default: random, "
                      "printed in the reproduce line)")
    race.add_argument("--sync", choices=("last-byte", "naive"), default="last-byte",
                      help="release method (default last-byte; naive is a baseline)")
    race.add_argument("--report", metavar="DIR", help="write history.jsonl and report.json here")
    race.add_argument("--json", action="store_true", help="print report.json to stdout")
    race.add_argument("--target", metavar="URL", help="a running deployment (default: embedded)")
    race.add_argument("--token", default=os.environ.get("HARNESS_TOKEN"),
                      help="bearer token for --target (env HARNESS_TOKEN)")
    race.add_argument("--other-token", default=os.environ.get("HARNESS_OTHER_TOKEN"),
                      help="a second user's token (env HARNESS_OTHER_TOKEN)")
    race.add_argument("--dsn", default=os.environ.get("HARNESS_DSN"),
                      help="read-only DSN of the target's database (env HARNESS_DSN): "
                           "enables the database properties")
    race.add_argument("--provider-listen", type=_host_port, metavar="HOST:PORT",
                      help="where the fake provider listens; the target must use "
                           "http://HOST:PORT/v1 as its provider base URL")
    race.add_argument("--provider-url", metavar="URL",
                      help="the URL the target reaches the fake provider by, if it differs")
    race.add_argument("--profile", metavar="FILE", help="target profile (TOML): paths, auth "
                      "header, conflict code")
    race.add_argument("--chat-id", help="race on this existing idle chat instead of a new one")
    race.add_argument("--fault", action="append", type=_fault_name, default=[], metavar="NAME",
                      help="embedded only: switch a known bug on in the reference (repeatable)")
    race.add_argument("--losers-fast-ms", type=_positive, default=1000.0,
                      help="bound for race/losers-fast (default 1000)")
    race.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    race.add_argument("--allow-large", action="store_true",
                      help=f"lift the cap of --n {MAX_N} and 20000 total requests")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve-reference":
        return _serve_reference(args)
    if args.command == "race":
        return _race(args)
    if args.command == "check":
        return _check(args)
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




def _race(args: argparse.Namespace) -> int:
    import json

    import trio

    from harness.embedded import EmbeddedStartError
    from harness.engine import RaceConfig, TargetUnreachable
    from harness.postgres import PostgresUnavailable
    from harness.race import Interrupted, RaceOptions, run_race
    from harness.report import verdict_table
    from harness.target import ConfigError, Profile, Target, load_profile

    def usage(message: str) -> int:
        print(f"harness race: {message}", file=sys.stderr)
        return EXIT_USAGE

    if not args.allow_large and (args.n > MAX_N or args.n * args.trials > 20000):
        return usage(f"--n {args.n} x --trials {args.trials} exceeds the safety cap "
                     f"(n <= {MAX_N}, 20000 requests); pass --allow-large to lift it")
    target = None
    try:
        profile = load_profile(args.profile) if args.profile else Profile()
        if args.target:
            if not args.token:
                return usage("--target needs --token (or HARNESS_TOKEN)")
            if args.fault:
                return usage("--fault applies to the embedded reference only, not to --target")
            target = Target(base_url=args.target, token=args.token,
                            other_token=args.other_token, profile=profile,
                            insecure=args.insecure)
            target.endpoint()
        elif args.dsn or args.provider_listen or args.chat_id:
            return usage("--dsn, --provider-listen and --chat-id need --target")
    except ConfigError as exc:
        return usage(str(exc))
    opts = RaceOptions(
        config=RaceConfig(n=args.n, sync=args.sync, chat_id=args.chat_id,
                          losers_fast_bound_ms=args.losers_fast_ms),
        trials=args.trials, seed=args.seed, target=target, dsn=args.dsn,
        provider_listen=args.provider_listen, provider_url=args.provider_url,
        faults=tuple(args.fault),
        report_dir=None if args.report is None else Path(args.report),
        progress=args.trials > 1 and sys.stderr.isatty())
    try:
        outcome = trio.run(run_race, opts)  # run_race unwraps nursery exception groups
    except (PostgresUnavailable, EmbeddedStartError, TargetUnreachable) as exc:
        print(f"harness race: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OSError as exc:
        print(f"harness race: target unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"harness race: interrupted ({exc or 'SIGINT'}); the runs it started were "
              "stopped and the history written so far is kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    report = outcome.report
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(verdict_table(report))
    return int(report["exit_code"])


def _check(args: argparse.Namespace) -> int:
    import json

    from harness.history import HistoryError
    from harness.race import check_history
    from harness.report import build_report, verdict_table

    path = Path(args.history)
    try:
        run_meta, trials, results = check_history(path)
    except FileNotFoundError:
        print(f"harness check: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, UnicodeDecodeError) as exc:
        print(f"harness check: {path}: cannot read the history: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HistoryError as exc:
        print(f"harness check: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not trials:
        print(f"harness check: {path}: no trials in the history", file=sys.stderr)
        return EXIT_USAGE
    report = build_report(trials, results, config=run_meta,
                          reproduce=f"harness check {path}")
    print(json.dumps(report, indent=2) if args.json else verdict_table(report))
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
