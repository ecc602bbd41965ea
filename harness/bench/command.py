"""``harness bench`` from flags to exit code: the plan, the run, the results kept from an
earlier run of the same machine when only some sections are rerun, and the files written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

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
    single_error,
)
from raceharness.stack.postgres import PostgresUnavailable


def run_bench_command(args: argparse.Namespace) -> int:
    try:
        plan, sections = parse_plan(args)
    except ValueError as exc:
        print(f"harness bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    bench = Bench(plan, sections, seed=args.seed, quick=args.quick)
    previous = previous_results(out, bench.result) if set(sections) != set(SECTIONS) else None
    code = EXIT_OK
    try:
        try:
            trio.run(bench.run)
        except BaseExceptionGroup as group:  # the nursery's: its one meaningful error
            error = single_error(group)
            if error is group:
                raise
            raise error from group
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
