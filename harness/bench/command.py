"""``harness bench`` from flags to exit code: the plan, the run, the results kept from an
earlier run of the same machine when only some sections are rerun, and the files written.

Without ``--out`` the results go to a new ``bench-results/<UTC time>/`` folder in the current
directory (never over an earlier run, nor over the committed ``reports/bench``); a rerun of
some ``--sections`` then takes the other sections from the newest earlier folder there of the
same machine. ``bench.json`` records where it came from (``provenance``: commit, date, seed,
machine; :mod:`raceharness.shell.provenance`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from raceharness.bench.plan import SECTIONS, parse_plan
from raceharness.bench.render import (
    merge_sections,
    previous_results,
    render_markdown,
    write_results,
)
from raceharness.bench.run import Bench
from raceharness.runtime import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Interrupted,
    run_unwrapped,
)
from raceharness.shell.provenance import build_provenance, fresh_results_folder
from raceharness.stack.postgres import PostgresUnavailable


def newest_previous(base: Path, result: dict[str, Any]) -> dict[str, Any] | None:
    """The newest results under ``base`` (``bench-results/``) that :func:`previous_results`
    would keep sections from."""
    try:
        folders = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name,
                         reverse=True)
    except OSError:
        return None
    for folder in folders:
        previous = previous_results(folder, result)
        if previous is not None:
            return previous
    return None


def run_bench_command(args: argparse.Namespace) -> int:
    try:
        plan, sections = parse_plan(args)
    except ValueError as exc:
        print(f"harness bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out) if args.out else fresh_results_folder("bench")
    bench = Bench(plan, sections, seed=args.seed, quick=args.quick)
    bench.result["provenance"] = build_provenance({"bench": bench.seed})
    print(f"harness bench: results go to {out}", file=sys.stderr)
    previous = None
    if set(sections) != set(SECTIONS):
        previous = (previous_results(out, bench.result) if args.out
                    else newest_previous(out.parent, bench.result))
    code = EXIT_OK
    try:
        run_unwrapped(bench.run)
    except (PostgresUnavailable, OSError) as exc:
        print(f"harness bench: {exc}", file=sys.stderr)
        bench.result["error"] = str(exc)
        code = EXIT_UNREACHABLE
    except (KeyboardInterrupt, Interrupted):
        print("harness bench: interrupted; writing the figures measured so far", file=sys.stderr)
        bench.result["interrupted"] = True
        code = EXIT_INTERRUPTED
    if previous is not None:
        merge_sections(bench.result, previous)
    write_results(out, bench.result)
    print(render_markdown(bench.result))
    print(f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}", file=sys.stderr)
    return code
