"""Cancelling a task for sure.

On Python 3.11 one ``Task.cancel()`` can be lost: ``asyncio.wait_for`` (psycopg_pool waits with
it) swallows a cancellation that lands just as its inner wait completes, and the task goes on.
A task whose end matters (a run's provider relay, the instance's background loops at shutdown)
is therefore cancelled again until it has ended."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

RECANCEL_S = 0.05  # how long one cancel gets before it is repeated


async def cancel_until_done(task: asyncio.Task[Any],
                            before_each: Callable[[], None] | None = None) -> None:
    """Cancel ``task`` until it is done (``before_each`` runs ahead of every cancel); its
    outcome, an error included, is retrieved and dropped."""
    while not task.done():
        if before_each is not None:
            before_each()
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    if not task.cancelled():
        task.exception()
