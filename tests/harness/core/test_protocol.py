"""The protocol's facts in one place: the statuses, the frame -> status map, the winner rule
the checkers and the live trial share, the default bounds."""

from __future__ import annotations

from raceharness.core.protocol import (
    ACTIVE_STATUSES,
    FRAME_STATUS,
    TERMINAL_FRAMES,
    TERMINAL_STATUSES,
    default_losers_fast_bound_ms,
    pick_winner,
)


def test_statuses_and_frames_agree() -> None:
    assert set(ACTIVE_STATUSES).isdisjoint(TERMINAL_STATUSES)
    assert set(FRAME_STATUS.values()) == set(TERMINAL_STATUSES)
    assert TERMINAL_FRAMES == {"finish", "error", "abort"}


def pick(*answers: tuple[int, bool, int]) -> int | None:
    """(status, start frame had a run id, answer time) per racer -> the winner's position."""
    return pick_winner(range(len(answers)), won=lambda i: answers[i][0] == 200,
                       tracked=lambda i: answers[i][1], order=lambda i: (answers[i][2], i))


def test_the_winner_is_the_earliest_tracked_200() -> None:
    assert pick((409, False, 1), (200, True, 5), (200, True, 3)) == 2
    # an untracked 200 answered first is not the winner while a tracked one exists
    assert pick((200, False, 1), (200, True, 5)) == 1
    # without a tracked one, the earliest 200 still names a winner (a broken gate)
    assert pick((200, False, 4), (200, False, 2)) == 1
    assert pick((409, False, 1), (503, False, 2)) is None
    assert pick((200, True, 3), (200, True, 3)) == 0  # ties: the lower position


def test_the_losers_fast_default_bound_grows_past_n_333() -> None:
    assert default_losers_fast_bound_ms(2) == default_losers_fast_bound_ms(333) == 1000.0
    assert default_losers_fast_bound_ms(1000) == 3000.0
