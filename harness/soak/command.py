"""``harness soak`` from flags to exit code: the output folder checked before anything runs
(``--out``, else a new ``soak-results/<UTC time>/`` in the current directory: never over an
earlier run nor the committed ``reports/soak``), the seed, the run, the results written with
where they came from (``provenance``: commit, date, seed, machine), and the exit code
(``raceharness.runtime``)."""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import psycopg

from raceharness.runtime import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    run_unwrapped,
)
from raceharness.runtime import EXIT_INVALID as EXIT_NOT_OK
from raceharness.shell.provenance import build_provenance, fresh_results_folder
from raceharness.soak.plan import SoakPlan
from raceharness.soak.render import console_summary, write_results
from raceharness.soak.run import Soak
from raceharness.stack.embedded import EmbeddedStartError
from raceharness.stack.postgres import PostgresUnavailable


def run_soak_command(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else fresh_results_folder("soak")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        what = f"--out {args.out}" if args.out else str(out)
        print(f"harness soak: {what}: cannot write there: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    soak = Soak(SoakPlan.from_args(args, int(seed)))
    provenance = build_provenance({"soak": int(seed)})  # the code and the date at the start
    print(f"harness soak: results go to {out}", file=sys.stderr)
    try:
        result = run_unwrapped(soak.main)
    except (PostgresUnavailable, EmbeddedStartError) as exc:
        print(f"harness soak: environment unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except psycopg.OperationalError as exc:
        print(f"harness soak: the database stopped answering: {type(exc).__name__}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print("harness soak: interrupted before the load started", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result is None:
        print(f"harness soak: interrupted ({soak.interrupt.signal}) before the load started; "
              "nothing to report", file=sys.stderr)
        return EXIT_INTERRUPTED
    result["provenance"] = provenance
    write_results(out, result)
    print(console_summary(result))
    print(f"written: {out / 'soak.json'}, {out / 'soak.md'}")
    if result["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_OK if result["ok"] else EXIT_NOT_OK
