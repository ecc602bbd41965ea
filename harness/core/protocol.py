"""The protocol's facts the harness relies on, in one place (docs/protocol.md). Pure.

Run statuses, which of them hold a chat, the terminal frame each ending writes, the conflict
answer a profile may override, the rule that names a burst's winner, and the default bounds.
The checkers, the trial steps, the racers and soak read them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

# docs/protocol.md §5: a run holds its chat while pending or running (the partial unique index)
ACTIVE_STATUSES: tuple[str, ...] = ("pending", "running")
TERMINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "aborted")
# §3/§7: the terminal frame a stream ends with, and the status its run is recorded with
FRAME_STATUS: dict[str, str] = {"finish": "succeeded", "error": "failed", "abort": "aborted"}
TERMINAL_FRAMES = frozenset(FRAME_STATUS)

# §2.3/§2.5: the conflict answer (a target profile's [conflict] may say otherwise)
CONFLICT_STATUS = 409
RUN_ALREADY_ACTIVE = "A_RUN_ALREADY_ACTIVE"
CONFLICT_HOLDER = "activeRunId"

# conformance.md §2: default bounds
DEFAULT_LOSERS_FAST_BOUND_MS = 1000
DEFAULT_STOP_BOUND_MS = 2000


def default_losers_fast_bound_ms(n: int) -> float:
    """race/losers-fast's default bound: 1 s, raised to 3 ms per request above N=333, because a
    service answers a burst's rejections one after another and N=1000 of them take longer than
    a second on a small machine (measured: p99 1.6 s on 2 cores against the correct reference).
    A claim held open is still caught at any N: its losers are answered only after the winner
    ended, which the property rejects whatever the bound."""
    return max(float(DEFAULT_LOSERS_FAST_BOUND_MS), 3.0 * n)


T = TypeVar("T")


def pick_winner(candidates: Iterable[T], *, won: Callable[[T], bool],
                tracked: Callable[[T], bool], order: Callable[[T], tuple[int, ...]]) -> T | None:
    """The winner of a burst: of the requests that won (got 200), the earliest answered among
    those whose start frame carried a run id, else the earliest of all that won; None when
    none won. ``order`` is the request's (answer time, position) key."""
    pool = [c for c in candidates if won(c)]
    pool = [c for c in pool if tracked(c)] or pool
    return min(pool, key=order) if pool else None
