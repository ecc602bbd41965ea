"""Placeholder: `harness bench` is being built (see issue)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `harness bench`."""


def run_bench_command(args: argparse.Namespace) -> int:
    raise SystemExit("harness bench: not built yet")
