"""What the race program holds for one request of a burst, whatever carried it.

An HTTP/1.1 :class:`~raceharness.net.http1.Racer` (its own connection, last byte withheld) and
an HTTP/2 :class:`~raceharness.net.http2_stream.H2Stream` (one stream of a shared connection,
final frame withheld) both satisfy :class:`RaceRequest`: once released, the trial reads the
answer, waits on it, and closes it the same way. Sending is not part of it: each sync mode
releases its own kind (``trial/steps/burst.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import trio

from raceharness.net.http1 import Response


@runtime_checkable
class RaceRequest(Protocol):
    """One request of a burst, after its release: what the trial reads and waits on."""

    #: what it observed (facts only, judged later); filled as the answer arrives
    response: Response
    #: the status is known and, for a 200 event stream, its ``start`` frame was seen (or the
    #: response ended or failed)
    answered: trio.Event
    #: the response ended, or reading it failed
    finished: trio.Event
    #: when its last byte (HTTP/1.1) or final frame (HTTP/2) left, monotonic ns; None: not sent
    sent_ns: int | None
    #: the chat the turn was sent on, when the caller knows it (a stream may name none)
    chat_id: str | None

    async def read_response(self) -> None:
        """Until the answer has ended or failed; never raises for the target's misbehaviour."""
        ...

    async def aclose(self) -> None:
        """Close it: to the server, this request's client went away."""
        ...
