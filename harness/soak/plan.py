"""What ``harness soak`` runs (pure): its flags, the mix of actions and their sizes, and the
bound of every phase of a request. Nothing waits without a bound; nothing is retried."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

SCHEMA = "soak-v1"

ACTIONS = ("burst", "provider-error", "stop", "disconnect", "distinct", "turn")
WEIGHTS = (30, 18, 12, 10, 15, 15)
ERROR_MODES = ("error-mid", "status-500", "drop", "slow-first")

# Bounds of one request's phases (seconds). Nothing waits without one; nothing is retried.
CONNECT_S = 10.0
ANSWER_S = 10.0      # last byte sent -> status line (and the start frame of a stream)
CALL_S = 5.0         # start frame -> the provider call it causes
DRAIN_S = 20.0       # -> the end of every stream of an action
STOP_S = 10.0
RESTART_S = 60.0
SCRAPE_S = 5.0
PROGRESS_S = 30.0

MIN_DURATION_S = 5.0
BURST_SIZES = (5, 20)
DISTINCT_SIZES = (2, 6)
NEW_CHAT_P = 0.3        # a single turn starts a new chat instead of reusing an idle one
POOL_MAX = 8            # idle chats a worker keeps
TURNS_PER_CHAT = 25     # a chat retires after this many turns (its history grows)
TOKEN_INTERVAL_S = 0.02
FIRST_TOKEN_DELAY_S = 0.5


def _bounded(lo: float, hi: float, *, integer: bool = False) -> Callable[[str], float]:
    def parse(value: str) -> float:
        kind = "an integer" if integer else "a number"
        try:
            number: float = int(value) if integer else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}") from None
        if not math.isfinite(number) or not lo <= number <= hi:
            raise argparse.ArgumentTypeError(
                f"expected {kind} from {lo:g} to {hi:g}, got {value!r}")
        return number
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``harness soak``."""
    parser.add_argument("--duration", type=_bounded(MIN_DURATION_S, 86400), default=600.0,
                        metavar="SECONDS", help="seconds of load (default 600; at least 5)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write soak.json and soak.md here (default: a new folder "
                             "soak-results/<UTC time>/ in the current directory, so no run "
                             "overwrites another; the committed results are regenerated with "
                             "--out reports/soak)")
    parser.add_argument("--seed", type=_bounded(0, 2**63 - 1, integer=True),
                        help="seed of the workers' choices (default: random, printed)")
    parser.add_argument("--instances", type=_bounded(1, 8, integer=True), default=2,
                        help="reference instances on one database (default 2, so one can be "
                             "restarted while the other serves)")
    parser.add_argument("--concurrency", type=_bounded(1, 64, integer=True), default=4,
                        help="concurrent closed-loop workers (default 4)")
    parser.add_argument("--lease-s", type=_bounded(1.0, 60.0), default=3.0, metavar="SECONDS",
                        help="run lease of the reference (default 3: the restart's orphans "
                             "are reaped within the soak)")
    parser.add_argument("--pooler", choices=("pgbouncer",), default=None,
                        help="the reference reaches Postgres through PgBouncer in transaction "
                             "pooling mode, started and removed by the harness (needs the "
                             "pgbouncer package: apt-get install pgbouncer)")


@dataclass(frozen=True)
class SoakPlan:
    duration_s: float
    seed: int
    instances: int
    concurrency: int
    lease_s: float
    pooler: str | None = None  # "pgbouncer": the reference behind PgBouncer (transaction mode)

    @classmethod
    def from_args(cls, args: argparse.Namespace, seed: int) -> SoakPlan:
        return cls(duration_s=float(args.duration), seed=seed, instances=int(args.instances),
                   concurrency=int(args.concurrency), lease_s=float(args.lease_s),
                   pooler=getattr(args, "pooler", None))

    @property
    def settle_bound_s(self) -> float:
        """How long the end waits for the active runs to end: three leases (and a margin)."""
        return 3 * self.lease_s + 5

    def reproduce_line(self) -> str:
        return (f"harness soak --duration {self.duration_s:g} --seed {self.seed} "
                f"--instances {self.instances} --concurrency {self.concurrency} "
                f"--lease-s {self.lease_s:g}"
                + (f" --pooler {self.pooler}" if self.pooler else ""))
