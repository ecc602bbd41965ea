"""The ``harness`` command line: the parser of every subcommand and the dispatch to the module
that does the work (``commands/run.py``: race, run, conformance, scenarios;
``commands/history.py``: check, report; ``bench``; ``soak``; ``stack/serve.py``:
serve-reference).

Exit codes (conformance.md §5): 0 all valid, 1 a property invalid, 2 usage or configuration
error, 3 inconclusive, 4 target or environment unreachable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from raceharness.reference.faults import VALID_FAULTS
from raceharness.runtime import EXIT_UNREACHABLE, EXIT_USAGE, MAX_N


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"(raceharness {version('raceharness')})"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(raceharness, not installed)"


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    """-v / -q, accepted before and after the subcommand: a subcommand's copy defaults to
    SUPPRESS, so it sets the value only when given there."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log at debug level")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings and the result: no progress, no info log lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Race-testing and conformance harness for AI-chat services that allow "
                    "one active run per chat.",
        epilog="Exit codes: 0 valid, 1 invalid, 2 usage error, 3 inconclusive, 4 unreachable, "
               "130 interrupted.")
    parser.add_argument("--version", action="version", version=f"harness {_version()}")
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve-reference",
        help="run the reference server (with its own Postgres) until interrupted",
        description="Run the reference server for manual use: Postgres (embedded unless --dsn), "
                    "a user whose bearer token is --token, and the harness's fake provider unless "
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
                       "http://127.0.0.1:9000/v1 (default: the harness's fake provider)")
    serve.add_argument("--autonomous-runs", action="store_true",
                       help="a client disconnect lets the run finish (AUTONOMOUS_RUNS=true)")
    serve.add_argument("--lease-s", type=_positive, default=30.0, help="run lease (default 30)")
    serve.add_argument("--heartbeat-s", type=_positive, default=5.0,
                       help="lease renewal interval (default 5)")
    serve.add_argument("--pooler", choices=("pgbouncer",), default=None,
                       help="serve through PgBouncer in transaction pooling mode, started in "
                            "front of the Postgres (the provisioned one, or --dsn's) and "
                            "removed on exit; the stop listener connects to Postgres directly "
                            "(needs the pgbouncer package: apt-get install pgbouncer)")
    _add_race(sub)
    from raceharness.bench import add_arguments as add_bench_arguments
    from raceharness.soak import add_arguments as add_soak_arguments

    add_bench_arguments(sub.add_parser(
        "bench", help="measure synchronisation, detection power, service figures and scale",
        description="Benchmark the harness against the embedded reference: release and "
                    "server-observed arrival spread per sync mode, detection power, service "
                    "latency, wall time and scale. Writes JSON + Markdown (default a new "
                    "bench-results/<UTC time>/; see --out). About 15 minutes on 2 cores; "
                    "--quick about 2. Exit "
                    "codes: 0 written, 2 usage error, 4 environment unreachable, 130 "
                    "interrupted (the figures so far are written)."))
    add_soak_arguments(sub.add_parser(
        "soak", help="minutes of mixed load against the embedded reference, then the totals",
        description="Mixed load (bursts, distinct chats, stops, disconnects, provider errors, "
                    "one instance restart) against the embedded reference; then runs by "
                    "status, conflicts, reaps, provider calls, and the two numbers that must "
                    "be zero. Writes JSON + Markdown (default a new soak-results/<UTC "
                    "time>/; see --out)."))
    check = sub.add_parser("check", help="re-run the checkers on a saved history, offline",
                           description="Re-check a history.jsonl written by `harness race "
                                       "--report DIR`; prints the verdict table and exits with "
                                       "the verdict's code.")
    check.add_argument("history", help="path to history.jsonl")
    check.add_argument("--json", action="store_true", help="print report.json to stdout")
    report = sub.add_parser("report", help="re-render a report folder from its history.jsonl",
                            description="Re-check DIR/history.jsonl and rewrite report.json, "
                                        "junit.xml, summary.md and report.html in DIR; exits "
                                        "with the verdict's code.")
    report.add_argument("dir", metavar="DIR", help="a folder written by --report DIR")
    for subparser in sub.choices.values():
        _add_verbosity(subparser, argparse.SUPPRESS)
    return parser


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {number}")
    return number


def _adapter_arg(value: str) -> str:
    from raceharness.adapters import BUILTIN_ADAPTERS

    if value in BUILTIN_ADAPTERS or value.endswith(".toml") or "/" in value:
        return value
    raise argparse.ArgumentTypeError(f"unknown adapter {value!r}: expected one of "
                                     f"{', '.join(BUILTIN_ADAPTERS)} or a profile file (.toml)")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, _port(port)


def _add_target_options(p: argparse.ArgumentParser, *, n_default: int | None,
                        trials_default: int | None) -> None:
    n_help = "simultaneous requests" + (f" (default {n_default})" if n_default
                                         else " (default: each scenario's own)")
    p.add_argument("--n", type=_count, default=n_default, help=n_help)
    p.add_argument("--trials", type=_count, default=trials_default,
                   help="independent trials" + (f" (default {trials_default})" if trials_default
                                                else " (default: each scenario's own)"))
    p.add_argument("--seed", type=int, help="seed of the first trial (default: random, "
                   "printed in the reproduce line)")
    p.add_argument("--sync", choices=("last-byte", "naive", "h2-single-packet"),
                   default="last-byte",
                   help="release method: last-byte (HTTP/1.1, default), h2-single-packet "
                        "(HTTP/2, every final frame in one write per connection; the embedded "
                        "reference is then served by hypercorn; falls back to last-byte, "
                        "saying so, when the target does not speak HTTP/2), naive (baseline)")
    p.add_argument("--report", metavar="DIR", help="write history.jsonl, report.json, "
                   "junit.xml, summary.md and report.html here")
    p.add_argument("--json", action="store_true", help="print report.json to stdout")
    p.add_argument("--target", metavar="URL", help="a running deployment (default: embedded)")
    p.add_argument("--token", default=os.environ.get("HARNESS_TOKEN"),
                   help="bearer token for --target (env HARNESS_TOKEN)")
    p.add_argument("--other-token", default=os.environ.get("HARNESS_OTHER_TOKEN"),
                   help="a second user's token (env HARNESS_OTHER_TOKEN)")
    p.add_argument("--dsn", default=os.environ.get("HARNESS_DSN"),
                   help="read-only DSN of the target's database (env HARNESS_DSN): "
                        "enables the database properties")
    p.add_argument("--provider-listen", type=_host_port, metavar="HOST:PORT",
                   help="where the fake provider listens; the target must use "
                        "http://HOST:PORT/v1 as its provider base URL")
    p.add_argument("--provider-url", metavar="URL",
                   help="the URL the target reaches the fake provider by, if it differs")
    p.add_argument("--profile", metavar="FILE", help="target profile (TOML): the adapter and "
                   "its settings (paths or routes, auth header, conflict answer, service "
                   "settings); see docs/profiles.md")
    p.add_argument("--adapter", metavar="NAME|FILE", type=_adapter_arg,
                   help="--target's wire shape: ai-chat (this project's protocol, the "
                        "default), langgraph (the LangGraph Agent Server), or a profile FILE "
                        "declaring one")
    p.add_argument("--capability", action="append", default=[], metavar="NAME",
                   choices=("autonomous-runs", "disconnect-stops"),
                   help="declare how --target treats a client disconnect, so the disconnect "
                        "scenarios can run: autonomous-runs or disconnect-stops")
    p.add_argument("--provider-timeout", type=_positive, metavar="S",
                   help="--target only: the target's provider read timeout in seconds "
                        "(provider-stall runs only when it is declared)")
    p.add_argument("--lease", type=_positive, metavar="S",
                   help="--target only: the target's run lease in seconds (long-hold runs "
                        "only when it and --heartbeat are declared)")
    p.add_argument("--heartbeat", type=_positive, metavar="S",
                   help="--target only: the target's lease renewal interval in seconds")
    p.add_argument("--answer-timeout", type=_positive, default=10.0, metavar="S",
                   help="how long a request may go unanswered before it counts as a hang "
                        "(default 10)")
    p.add_argument("--max-wait", type=_positive, default=120.0, metavar="S",
                   help="--target only: skip a scenario whose waits, derived from the "
                        "declared settings, exceed S seconds (default 120)")
    p.add_argument("--strict", action="store_true",
                   help="a skipped scenario makes the run inconclusive (exit 3): what was not "
                        "tested is not passed")
    p.add_argument("--chat-id", help="race on this existing idle chat instead of a new one")
    p.add_argument("--fault", action="append", type=_fault_name, default=[], metavar="NAME",
                   help="embedded only: switch a known bug on in the reference (repeatable)")
    p.add_argument("--pooler", choices=("pgbouncer",), default=None,
                   help="embedded only: put PgBouncer (transaction pooling) between the "
                        "reference and its Postgres, started and removed like it (needs the "
                        "pgbouncer package: apt-get install pgbouncer)")
    p.add_argument("--losers-fast-ms", type=_positive, default=None,
                   help="bound for race/losers-fast (default 1000, or 3 ms per request above "
                        "N=333)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--allow-large", action="store_true",
                   help=f"lift the cap of --n {MAX_N} and 20000 total requests")


_EPILOG = ("Exit codes: 0 all valid, 1 a property invalid, 2 usage error, 3 inconclusive, "
           "4 target or environment unreachable, 130 interrupted.")


def _add_race(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    race = sub.add_parser(
        "race", help="fire N simultaneous turns on one chat and check the properties",
        description="Fire N stream requests on one idle chat so that they truly arrive "
                    "together (last-byte synchronisation), hold the winner, stop it, and check "
                    "one-winner, losers-409, losers-fast, provider attribution, untracked runs, "
                    "loser writes, stoppability and release (the same-chat-burst scenario). "
                    "Without --target it runs against the embedded reference (Postgres, "
                    "reference and fake provider started and removed by the harness).",
        epilog=_EPILOG)
    _add_target_options(race, n_default=50, trials_default=1)
    run = sub.add_parser(
        "run", help="run scenarios by name or file",
        description="Run catalogue scenarios (see `harness scenarios`) or your own scenario "
                    "files. A scenario needing a capability the target lacks is skipped with "
                    "its reason, never passed.", epilog=_EPILOG)
    run.add_argument("scenarios", nargs="+", metavar="SCENARIO_OR_FILE")
    _add_target_options(run, n_default=None, trials_default=None)
    conf = sub.add_parser(
        "conformance", help="run every applicable scenario; with --faults, the fault matrix",
        description="Run the whole scenario catalogue against the target. With --faults "
                    "(embedded only) also run each known fault's scenarios against the "
                    "reference with that fault switched on, and print the fault x property "
                    "matrix: every fault must be caught and the correct reference clean.",
        epilog=_EPILOG)
    conf.add_argument("--faults", metavar="all|NAME,...",
                      help="embedded only: the faults to prove caught (all, or a list)")
    conf.add_argument("--fault-trials", type=_count, default=3, metavar="K",
                      help="trials for each gate fault's scenario (default 3): a fault counts "
                           "as caught when any trial catches it, so one unlucky interleaving "
                           "is no false negative; deterministic faults run one trial")
    conf.add_argument("--matrix-dir", metavar="DIR",
                      help="write matrix.json and matrix.md here (with --faults)")
    _add_target_options(conf, n_default=None, trials_default=None)
    sub.add_parser("scenarios", help="list the scenario catalogue",
                   description="List the shipped scenarios with a one-line description, "
                               "what each needs, and the properties it checks.")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `harness scenarios | head`: the reader left; not our error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # said by the subcommand, with its own usage line, not the top level's
        commands = _subcommands(parser)
        (commands.get(args.command) or parser).error(
            f"unrecognized arguments: {' '.join(extras)}")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # On a terminal a log line first clears the live progress line, so they never glue.
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""
    logging.basicConfig(level=level,
                        format=clear + "%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve-reference":
        return _serve_reference(args)
    if args.command in ("race", "run", "conformance"):
        from raceharness.commands.run import run_command

        return run_command(args)
    if args.command == "scenarios":
        from raceharness.commands.run import list_scenarios

        return list_scenarios()
    if args.command == "bench":
        from raceharness.bench import run_bench_command

        return run_bench_command(args)
    if args.command == "soak":
        from raceharness.soak import run_soak_command

        return run_soak_command(args)
    if args.command in ("check", "report"):
        from raceharness.commands.history import check_command, report_command

        return (check_command if args.command == "check" else report_command)(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


def _serve_reference(args: argparse.Namespace) -> int:
    from raceharness.reference.faults import parse_faults
    from raceharness.reference.settings import SettingsError
    from raceharness.stack.postgres import PostgresUnavailable
    from raceharness.stack.serve import ServeOptions, serve_reference

    if args.lease_s <= args.heartbeat_s:
        print(f"harness: --lease-s ({args.lease_s}) must exceed --heartbeat-s "
              f"({args.heartbeat_s})", file=sys.stderr)
        return EXIT_USAGE
    opts = ServeOptions(host=args.host, port=args.port, token=args.token, dsn=args.dsn,
                        faults=parse_faults(args.fault), provider_url=args.provider_url,
                        autonomous_runs=args.autonomous_runs, lease_s=args.lease_s,
                        heartbeat_interval_s=args.heartbeat_s, pooler=args.pooler)
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
