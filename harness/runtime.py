"""What every command shares at run time: the exit codes, the usage error, signals, and the one
meaningful error inside a nursery's exception group.

Exit codes (conformance.md §5, the contract users script against): 0 all valid, 1 a property
invalid (``bench``/``soak``: a bar or a must-be-zero figure missed), 2 usage or configuration
error, 3 inconclusive, 4 target or environment unreachable, 130 interrupted (SIGINT/SIGTERM:
runs stopped, partial history kept).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

import trio

T = TypeVar("T")
EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_UNKNOWN, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
MAX_N = 1000            # --n above this (or 20000 requests in all) needs --allow-large
MAX_REQUESTS = 20000


class UsageError(Exception):
    """Bad flags or files: exit 2 with this one-line message."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the runs started were stopped, the reports so far kept."""


async def raise_on_signal(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` inside the caller's nursery."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            raise Interrupted(signal.Signals(signum).name)


def single_error(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The one meaningful error inside a nursery's group (our errors are raised one at a
    time): an interruption first, else the only leaf that is not a cancellation, else the
    group itself."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    for kind in (Interrupted, KeyboardInterrupt):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if len(leaves) == 1 else group


def run_unwrapped(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(fn, *args)``, re-raising the one meaningful error of a nursery's exception
    group (:func:`single_error`) so callers catch plain exceptions."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is group:
            raise
        raise error from group


def use_colour(stream: TextIO = sys.stdout) -> bool:
    """ANSI colour on a terminal; ``NO_COLOR`` (any value) turns it off, ``FORCE_COLOR`` on
    (https://no-color.org conventions)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()
