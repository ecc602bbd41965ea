"""What ``harness bench`` runs (pure): its flags, the sizes of a full and a ``--quick`` run, the
sections, the bars shown beside the figures, and the scenarios and bounds of the trials."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from raceharness.core.scenario import Scenario, parse_scenario
from raceharness.trial.context import SYNC_MODES, RaceConfig

# v2: service.cpu_per_loser_ms.reference_loop_ms_per_burst (was reference_floor_last_409_ms)
BENCH_SCHEMA = "raceharness/bench/v2"
SECTIONS = ("wall", "scale", "sync", "service", "detection")

# The bars of issue #5 (2-core machines): shown beside the figures, never asserted.
BARS = {
    "release_spread_n50_ms": 0.5, "release_spread_n1000_ms": 10.0,
    "detection_n2_last_byte": 0.95, "race_phase_s": 1.5, "cold_s": 8.0,
    "p99_409_n50_ms": 50.0, "n1000_wall_s": 30.0, "harness_rss_mb": 250.0,
    "checker_100k_s": 2.0,
}


@dataclass(frozen=True)
class Plan:
    sync_ns: tuple[int, ...]
    sync_trials: int
    sync_trials_large: int          # for N >= 200
    detection_ns: tuple[int, ...]
    detection_trials: int
    service_trials: int
    cold_runs: int
    scale_n: int
    scale_chats: int
    scale_per_chat: int
    scale_trials: int = 3
    synthetic_ops: int = 100_000
    wall_n: int = 50
    service_instances: int = 1      # reference processes behind the service section's bursts


FULL = Plan(sync_ns=(2, 10, 50, 200, 1000), sync_trials=7, sync_trials_large=3,
            detection_ns=(2, 50), detection_trials=50, service_trials=20, cold_runs=3,
            scale_n=1000, scale_chats=200, scale_per_chat=5)
QUICK = Plan(sync_ns=(2, 10, 50), sync_trials=3, sync_trials_large=1, detection_ns=(2, 50),
             detection_trials=10, service_trials=5, cold_runs=1, scale_n=200, scale_chats=20,
             scale_per_chat=5, scale_trials=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a short run (N up to 50, K=10 detection trials, N=200 scale)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write bench.json and bench.md here (default: a new folder "
                             "bench-results/<UTC time>/ in the current directory, so no run "
                             "overwrites another; the committed figures are regenerated with "
                             "--out reports/bench)")
    parser.add_argument("--sections", metavar="LIST", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--trials", type=int, metavar="K",
                        help="detection trials per cell (default 50, --quick 10)")
    parser.add_argument("--service-instances", type=int, metavar="K",
                        help="reference instances (processes on one database) for the service "
                             "section; the burst is spread over them (default 1)")
    parser.add_argument("--seed", type=int, help="seed of the first trial (default random)")


def parse_plan(args: argparse.Namespace) -> tuple[Plan, tuple[str, ...]]:
    """The plan and the sections the flags ask for; ValueError naming the flag and value."""
    plan = QUICK if args.quick else FULL
    if args.trials is not None:
        if args.trials < 1:
            raise ValueError(f"--trials: expected an integer >= 1, got {args.trials}")
        plan = replace(plan, detection_trials=args.trials)
    instances = args.service_instances
    if instances is not None:
        if not 1 <= instances <= 8:
            raise ValueError(f"--service-instances: expected an integer from 1 to 8, got "
                             f"{instances}")
        plan = replace(plan, service_instances=instances)
    sections = tuple(s.strip() for s in str(args.sections).split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"--sections: unknown section(s) {', '.join(unknown) or '(none)'}; "
                         f"valid: {', '.join(SECTIONS)}")
    return plan, sections


def modes() -> list[tuple[str, str]]:
    """(server, sync mode) pairs to measure: HTTP/1.1 modes on uvicorn (the reference's
    default; it speaks no HTTP/2) and every mode on hypercorn."""
    return ([("uvicorn", m) for m in SYNC_MODES if m != "h2-single-packet"]
            + [("hypercorn", m) for m in SYNC_MODES])


def modes_by_server(detection: bool = False) -> dict[str, list[str]]:
    """The sync modes measured on each server, in order. Detection runs every mode on uvicorn
    and only ``h2-single-packet`` on hypercorn (the HTTP/1.1 modes are uvicorn's there)."""
    by_server: dict[str, list[str]] = {}
    for server, mode in modes():
        if not detection or server == "uvicorn" or mode == "h2-single-packet":
            by_server.setdefault(server, []).append(mode)
    return by_server


def large_config(n: int) -> RaceConfig:
    """Phase bounds that grow with N (the defaults are sized for N <= 200); losers-fast keeps
    the command line's default (context.default_losers_fast_bound_ms)."""
    extra = max(0.0, (n - 200) / 1000) * 20
    return RaceConfig(answer_timeout_s=10 + extra, drain_timeout_s=10 + extra,
                      connect_timeout_s=10 + extra)


def many_chats_scenario(chats: int, per_chat: int) -> Scenario:
    return parse_scenario({
        "name": "many-chats-burst",
        "summary": f"{chats} chats x {per_chat} simultaneous turns each",
        "n": chats * per_chat, "trials": 1,
        "properties": ["chats/one-winner-each", "stream/well-formed"],
        "steps": [{"do": "new-chats", "n": chats},
                  {"do": "burst", "chats": "distinct", "per-chat": per_chat},
                  {"do": "drain"}],
    }, "<bench>")
