"""The implementations of the scenario steps, one registered function per spec of
``core/steps.py``, by area:

- ``chats``: new-chat, new-chats, hold-turn, released-turn
- ``burst``: burst (and the answers awaited, shared with late-turns)
- ``observe``: observe, wait-run-end (and the observations other steps make)
- ``stop``: stop-winner, disconnect-winner, release-provider, drain
- ``storms``: disconnect-storm
- ``long_hold``: hold-past, late-turns
- ``probes``: stale-stop, foreign-user, bad-inputs
- ``control``: kill-owner, restart-service, expire-lease, database-outage, database-down,
  burst-into-outage, burst-during-outage, database-up

Importing this package registers them all in ``base.IMPLEMENTATIONS``; ``base.Program.run``
dispatches through it.
"""

from raceharness.trial.steps import (  # noqa: F401 - imported to register the steps
    burst,
    chats,
    control,
    long_hold,
    observe,
    probes,
    stop,
    storms,
)
from raceharness.trial.steps.base import (
    IMPLEMENTATIONS,
    Program,
    StepNotAvailable,
    TrialState,
    step,
)

__all__ = ["IMPLEMENTATIONS", "Program", "StepNotAvailable", "TrialState", "step"]
