"""Fault switches: each re-introduces one known bug so the harness can prove it catches it.

Every fault is off by default. A server with any fault on logs it loudly at start and reports
it from ``/healthz``, so nobody runs a faulty server by accident. The catalogue mirrors
conformance.md §4; the code path each one changes is named beside it.

Two faults show only with several instances on one database: ``lease-too-short`` (an instance
never reclaims its own live run, so only another instance's turn or reaper takes the chat) and
``stop-local-only`` (a stop received by the owner itself still works).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Fault(StrEnum):
    # gate.py: the gate's 23505 is logged and swallowed; the turn streams with no run row.
    SWALLOW_UNIQUE_VIOLATION = "swallow-unique-violation"
    # schema.py: the partial unique index is not created; only the pre-check guards (TOCTOU).
    NO_UNIQUE_INDEX = "no-unique-index"
    # gate.py: the gate's conflict is answered 500 instead of 409.
    BLANKET_500 = "blanket-500"
    # turn.py: the provider request is opened before the run row is inserted.
    PROVIDER_BEFORE_GATE = "provider-before-gate"
    # turn.py: the user message is written before the gate.
    PERSIST_BEFORE_GATE = "persist-before-gate"
    # gate.py: the run INSERT stays in a transaction held open while the provider streams.
    CLAIM_HELD_OPEN = "claim-held-open"
    # turn.py: a failed begin (database error) falls back to streaming without a run.
    UNTRACKED_ON_BEGIN_FAILURE = "untracked-on-begin-failure"
    # runner.py: a provider failure sends the error frame but leaves the run `running`.
    LEAK_ON_PROVIDER_ERROR = "leak-on-provider-error"
    # runner.py: stop marks the row aborted but keeps relaying the provider's tokens.
    STOP_IGNORES_PROVIDER = "stop-ignores-provider"
    # app.py: with AUTONOMOUS_RUNS=false a client disconnect does not stop the run.
    IGNORE_DISCONNECT = "ignore-disconnect"
    # gate.py/registry.py: no lease is written or honoured; a dead owner holds the chat forever.
    NO_LEASE = "no-lease"
    # gate.py: terminal writes without compare-and-set; a late writer overwrites a final status.
    LATE_WRITE_OVERWRITES = "late-write-overwrites"
    # gate.py: the lease written at the INSERT and at each renewal is a tenth of the heartbeat
    # interval, so a live run looks expired between heartbeats; another instance sharing the
    # database (its pre-check or its reaper) reclaims the chat while the run still streams.
    LEASE_TOO_SHORT = "lease-too-short"
    # registry.py/app.py: a stop reaches only the runs of the instance that received it, the
    # single-process design: no NOTIFY is sent or listened for and the heartbeat ignores
    # stop_requested_at. A stop sent to another instance marks the row (stopped: true) and
    # the owner streams on to the end.
    STOP_LOCAL_ONLY = "stop-local-only"


VALID_FAULTS: tuple[str, ...] = tuple(f.value for f in Fault)


class UnknownFaultError(ValueError):
    """A fault name that is not in the catalogue (bad configuration, the operator's to fix)."""


def parse_faults(names: Iterable[str]) -> frozenset[Fault]:
    """Parse fault names (already split); blank entries are ignored.

    >>> sorted(f.value for f in parse_faults(["no-lease", " blanket-500 "]))
    ['blanket-500', 'no-lease']
    """
    faults: set[Fault] = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        try:
            faults.add(Fault(name))
        except ValueError:
            raise UnknownFaultError(
                f"unknown fault {name!r}; valid faults: {', '.join(VALID_FAULTS)}"
            ) from None
    return frozenset(faults)


def parse_fault_list(value: str) -> frozenset[Fault]:
    """Parse a comma-separated setting such as ``REFERENCE_FAULTS=a,b``."""
    return parse_faults(value.split(","))
