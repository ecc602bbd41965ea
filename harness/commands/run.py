"""The commands that run scenarios: ``race``, ``run``, ``conformance``; and ``scenarios``.

Argument checking happens before anything starts; every failure maps to one line on stderr and
the exit code of conformance.md §5.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import trio

from raceharness.adapters import BUILTIN_ADAPTERS
from raceharness.adapters.base import AdapterError
from raceharness.core.report import paint, verdict_table
from raceharness.core.scenario import Scenario, ScenarioError, catalogue, resolve
from raceharness.net.target import ConfigError, Profile, Target, load_profile
from raceharness.runtime import (
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MAX_N,
    MAX_REQUESTS,
    Interrupted,
    UsageError,
    use_colour,
)
from raceharness.shell.preflight import PreflightError
from raceharness.stack.embedded import EmbeddedStartError
from raceharness.stack.postgres import PostgresUnavailable
from raceharness.trial.context import RaceConfig, TargetUnreachable
from raceharness.trial.suite import RaceOptions, run_race, run_scenarios


def _options(args: argparse.Namespace) -> RaceOptions:
    n, trials = args.n, args.trials
    if not args.allow_large and n is not None and (
            n > MAX_N or n * (trials or 1) > MAX_REQUESTS):
        raise UsageError(f"--n {n} x --trials {trials or 1} exceeds the safety cap "
                         f"(n <= {MAX_N}, {MAX_REQUESTS} requests); pass --allow-large to lift it")
    target = None
    try:
        profile = _profile(args)
        if args.target:
            if not args.token:
                raise UsageError("--target needs --token (or HARNESS_TOKEN)")
            if args.fault or getattr(args, "faults", None):
                raise UsageError("--fault/--faults apply to the embedded reference only, "
                                 "not to --target")
            if getattr(args, "pooler", None):
                raise UsageError("--pooler applies to the embedded reference only, not to "
                                 "--target (put your deployment's own pooler in front of it)")
            target = Target(base_url=args.target, token=args.token,
                            other_token=args.other_token, profile=profile,
                            insecure=args.insecure)
            target.endpoint()
        elif args.dsn or args.provider_listen or args.chat_id or args.capability:
            raise UsageError("--dsn, --provider-listen, --chat-id and --capability need "
                             "--target")
        elif args.provider_timeout or args.lease or args.heartbeat:
            raise UsageError("--provider-timeout, --lease and --heartbeat describe a --target; "
                             "the embedded reference runs with each scenario's own settings")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    declared = profile.service.declared()
    for name, flag in (("provider_timeout_s", "provider_timeout"), ("lease_s", "lease"),
                       ("heartbeat_s", "heartbeat")):
        if getattr(args, flag) is not None:
            declared[name] = getattr(args, flag)
    if "lease_s" in declared and "heartbeat_s" in declared and \
            declared["lease_s"] <= declared["heartbeat_s"]:
        raise UsageError(f"--lease ({declared['lease_s']:g}) must exceed --heartbeat "
                         f"({declared['heartbeat_s']:g}): a live run would expire between "
                         "heartbeats")
    return RaceOptions(
        config=RaceConfig(n=n or 50, sync=args.sync, chat_id=args.chat_id,
                          losers_fast_bound_ms=args.losers_fast_ms,
                          answer_timeout_s=args.answer_timeout),
        trials=trials, n=n, seed=args.seed, target=target, dsn=args.dsn,
        provider_listen=args.provider_listen, provider_url=args.provider_url,
        faults=tuple(args.fault), capabilities=frozenset(args.capability),
        report_dir=None if args.report is None else Path(args.report),
        progress="off" if args.quiet else "live" if sys.stderr.isatty() else "lines",
        command=args.command,
        service_settings=declared, strict=args.strict, max_wait_s=args.max_wait,
        reproduce_flags=reproduce_flags(args), pooler=getattr(args, "pooler", None))


def _profile(args: argparse.Namespace) -> Profile:
    """The target profile: ``--profile``'s file and/or ``--adapter`` (a built-in's name, or a
    profile file declaring one)."""
    adapter = getattr(args, "adapter", None)
    if adapter and adapter not in BUILTIN_ADAPTERS:  # a file: the profile itself
        if args.profile:
            raise UsageError("--adapter FILE and --profile FILE: give one profile file")
        return load_profile(adapter)
    if adapter and not args.target and adapter != "ai-chat":
        raise UsageError(f"--adapter {adapter} needs --target (the embedded reference speaks "
                         "ai-chat)")
    if args.profile or adapter:
        return load_profile(args.profile, adapter)
    return Profile()


def reproduce_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """Every option that shaped the run, for its reproduce lines: secrets as the environment
    variables the harness reads (never their values), file paths as given. Left out: what only
    chooses where the output goes (--report, --json) and what reproduce_line adds itself
    (--n, --trials, --seed, --sync, --fault)."""
    flags: list[str] = []
    if args.target:
        flags += ["--target", shlex.quote(args.target), "--token", "$HARNESS_TOKEN"]
        if args.other_token:
            flags += ["--other-token", "$HARNESS_OTHER_TOKEN"]
        if args.dsn:
            flags += ["--dsn", '"$HARNESS_DSN"']
    for flag, value in (("--profile", args.profile),
                        ("--adapter", getattr(args, "adapter", None)),
                        ("--chat-id", args.chat_id),
                        ("--provider-url", args.provider_url),
                        ("--provider-timeout", args.provider_timeout),
                        ("--lease", args.lease), ("--heartbeat", args.heartbeat),
                        ("--losers-fast-ms", args.losers_fast_ms)):
        if value is not None:
            flags += [flag, shlex.quote(f"{value:g}" if isinstance(value, float) else value)]
    if args.provider_listen:
        flags += ["--provider-listen", f"{args.provider_listen[0]}:{args.provider_listen[1]}"]
    flags += [part for cap in args.capability for part in ("--capability", cap)]
    if args.max_wait != 120.0:
        flags += ["--max-wait", f"{args.max_wait:g}"]
    if args.answer_timeout != 10.0:
        flags += ["--answer-timeout", f"{args.answer_timeout:g}"]
    if getattr(args, "pooler", None):
        flags += ["--pooler", args.pooler]
    flags += [flag for flag, on in (("--insecure", args.insecure), ("--strict", args.strict),
                                    ("--allow-large", args.allow_large)) if on]
    return tuple(flags)


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    if args.command == "run":
        try:
            return [resolve(name) for name in args.scenarios]
        except ScenarioError as exc:
            raise UsageError(str(exc)) from None
    return list(catalogue().values())


def _given(args: argparse.Namespace, scenarios: list[Scenario]) -> dict[str, str]:
    """Scenario name -> how the command line named it (a catalogue name or a file path)."""
    if args.command != "run":
        return {}
    return {s.name: shlex.quote(given) for s, given in zip(scenarios, args.scenarios,
                                                           strict=True)}


def run_command(args: argparse.Namespace) -> int:
    name = f"harness {args.command}"
    try:
        opts = _options(args)
        if args.command == "conformance" and args.faults:
            from raceharness.commands.matrix import parse_faults_arg, run_matrix

            faults = parse_faults_arg(args.faults)
            return trio.run(run_matrix, opts, faults, args.fault_trials,
                            None if args.matrix_dir is None else Path(args.matrix_dir),
                            args.json)
        if args.command == "race":
            outcome = trio.run(run_race, opts)
        else:
            scenarios = _scenarios(args)
            opts = replace(opts, scenario_args=_given(args, scenarios))
            outcome = trio.run(run_scenarios, opts, scenarios)
    except UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PreflightError as exc:
        print(f"{name}: preflight: {exc}", file=sys.stderr)
        return exc.exit_code
    except AdapterError as exc:
        print(f"{name}: the target's wire is not what its adapter expects: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except (PostgresUnavailable, EmbeddedStartError, TargetUnreachable) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OSError as exc:
        print(f"{name}: target unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"{name}: interrupted ({exc or 'SIGINT'}); the runs it started were stopped "
              "and the history written so far is kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    report = outcome.report
    colour = use_colour()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if args.command != "race":
            for scenario, info in report["scenarios"].items():
                extra = f": {info['skipped']}" if info["skipped"] else (
                    f" ({info['trials']} trial{'s' if info['trials'] != 1 else ''})")
                print(f"{scenario:28} {paint(info['verdict'], colour, 8)}{extra}")
            skipped = sum(1 for info in report["scenarios"].values() if info["skipped"])
            if skipped:
                print(f"not tested: {skipped} scenario{'s' if skipped != 1 else ''} skipped "
                      "(reasons above)" + ("" if args.strict else "; --strict makes a skip "
                                           "exit 3"))
            print()
        print(verdict_table(report, colour))
        lacks = report.get("not_checkable") or {}
        if lacks:
            adapter = (report.get("adapter") or {}).get("name", "?")
            print(f"not checkable through adapter {adapter} ({len(lacks)} propert"
                  f"{'y' if len(lacks) == 1 else 'ies'}"
                  + ("" if args.strict else "; --strict makes this exit 3") + "):")
            for prop, why in lacks.items():
                print(f"  {prop}: {why}")
    return int(report["exit_code"])


def list_scenarios() -> int:
    try:
        scenarios = catalogue()
    except ScenarioError as exc:  # a broken shipped file is our bug, but say it plainly
        print(f"harness scenarios: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from raceharness.core.scenario import SERVICE_SETTINGS

    for scenario in scenarios.values():
        needs = f"  [needs {', '.join(sorted(scenario.requires))}]" if scenario.requires else ""
        assumes = "" if not scenario.assumes else "  [assumes " + ", ".join(
            f"{SERVICE_SETTINGS[name][0]}" for name in scenario.assumes) + " on a --target]"
        print(f"{scenario.name:28} {scenario.summary}{needs}{assumes}")
    return 0
