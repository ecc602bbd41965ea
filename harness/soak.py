"""Placeholder: `harness soak` is being built (see issue)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `harness soak`."""


def run_soak_command(args: argparse.Namespace) -> int:
    raise SystemExit("harness soak: not built yet")
