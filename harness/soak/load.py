"""The soak's requests: what one request saw, and one action's requests sent together.

Requests are built by the race engine's own ``trial.context`` (``TrialContext.racer`` with
``race_text``: the same method, path, headers and body as a trial's turns), so the fake
provider attributes every call by the ``[race:<nonce>]`` in its text. The ``Load`` holds what
the workers and the restart share: the live instances, the provider's mode per request, and
every request made (``Tally.reqs``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from raceharness.net.http1 import Racer
from raceharness.net.target import Target
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import ServiceClient
from raceharness.soak.plan import (
    ANSWER_S,
    CALL_S,
    CONNECT_S,
    DRAIN_S,
    FIRST_TOKEN_DELAY_S,
    STOP_S,
    TOKEN_INTERVAL_S,
    SoakPlan,
)
from raceharness.trial.context import RaceConfig, TrialContext, race_text


@dataclass
class Req:
    nonce: str
    action: str
    instance: int
    chat_id: str | None
    mode: str
    called: trio.Event = field(default_factory=trio.Event)
    status: int | None = None
    run_id: str | None = None
    chat_out: str | None = None
    terminal: str | None = None
    done: bool = False
    error: str | None = None
    findings: int = 0
    sent_ns: int | None = None
    headers_ns: int | None = None
    disconnected: bool = False   # the harness closed it on purpose
    timed_out: bool = False
    minute: int = 0              # of the load, when it was sent

    def outcome(self) -> str:
        if self.disconnected:
            return "disconnected"
        if self.timed_out:
            return "timeout"
        if self.status is None:
            return "no-answer"
        if self.status == 200:
            return f"200-{self.terminal}" if self.terminal and self.done else "200-cut"
        return str(self.status)

    def clean(self) -> bool:
        """Its chat is idle again: a refusal, or a stream read to its end."""
        return self.outcome() in ("200-finish", "200-error", "200-abort", "409")


@dataclass
class Tally:
    """What the load counts as it goes (the database and the provider's ledger are read at
    the end): every request, the bursts, the stops, the restart, the crashes, the reference's
    peak memory and its own counters."""
    reqs: dict[str, Req] = field(default_factory=dict)
    bursts: list[dict[str, Any]] = field(default_factory=list)
    stops: Counter[str] = field(default_factory=Counter)
    restart: dict[str, Any] = field(default_factory=lambda: {"done": False})
    crashes: list[str] = field(default_factory=list)   # the first 20
    crash_count: int = 0
    rss: list[dict[str, Any]] = field(default_factory=list)
    metrics: Counter[str] = field(default_factory=Counter)
    metrics_scrapes: int = 0
    metrics_failures: int = 0

    def crash(self, text: str) -> None:
        self.crash_count += 1
        if len(self.crashes) < 20:
            self.crashes.append(text)


Middle = Callable[[list[tuple[Req, Racer]]], Awaitable[None]]


class Load:
    """The state the workers and the restart share, and the requests they send."""

    def __init__(self, plan: SoakPlan, tally: Tally) -> None:
        self.plan = plan
        self.tally = tally
        self.provider = FakeProvider(token_interval_s=TOKEN_INTERVAL_S,
                                     first_token_delay_s=FIRST_TOKEN_DELAY_S)
        self.provider.mode_for = self._mode_for
        self.modes: dict[str, str] = {}
        self.counter = 0
        self.settling = False         # the load ended: every call finishes
        self.down: set[int] = set()   # instances killed and not yet back
        self.up = trio.Event()        # set (and replaced) when an instance is back
        self.t0 = 0.0
        self.deadline = 0.0
        self.targets: list[Target] = []
        self.clients: list[ServiceClient] = []
        self.requests: TrialContext | None = None

    def attach(self, targets: list[Target], clients: list[ServiceClient]) -> None:
        """The service's instances. ``clients`` is replaced in place when one restarts. The
        context is the race engine's, used here only to build requests (``racer``)."""
        self.targets, self.clients = targets, clients
        self.requests = TrialContext(target=targets[0], config=RaceConfig(),
                                     provider=self.provider, db=None, service=clients[0],
                                     trial_no=0, seed=self.plan.seed, targets=targets,
                                     services=clients)

    # -- the provider's view ------------------------------------------------------------------

    def _mode_for(self, nonce: str | None) -> str:
        req = self.tally.reqs.get(nonce or "")
        if req is not None:
            req.called.set()
        if self.settling:
            return "finish"
        return self.modes.get(nonce or "", "finish")

    async def wait_called(self, req: Req) -> None:
        with trio.move_on_after(CALL_S):
            await req.called.wait()

    # -- requests -----------------------------------------------------------------------------

    def new_req(self, action: str, instance: int, chat_id: str | None, mode: str) -> Req:
        self.counter += 1
        nonce = f"soak-{self.plan.seed:x}-{self.counter}"
        req = Req(nonce=nonce, action=action, instance=instance, chat_id=chat_id, mode=mode,
                  minute=int((trio.current_time() - self.t0) // 60))
        self.tally.reqs[nonce] = req
        self.modes[nonce] = mode
        return req

    async def instance(self, rng: random.Random) -> int:
        """A live instance (a load balancer's choice); waits while every instance is down."""
        n = self.plan.instances
        k = rng.randrange(n)
        while True:
            for j in range(n):
                if (k + j) % n not in self.down:
                    return (k + j) % n
            await self.up.wait()

    async def stop(self, rng: random.Random, run_id: str | None) -> bool:
        """``/stop`` on a live instance; True when the service says it stopped the run."""
        k = await self.instance(rng)
        try:
            with trio.fail_after(STOP_S):
                status, stopped = await self.clients[k].stop(run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - the service's failure is a count, not a crash
            self.tally.stops[f"error {type(exc).__name__}"] += 1
            return False
        self.tally.stops[f"{status} stopped={str(stopped).lower()}"] += 1
        return stopped is True

    async def group(self, reqs: list[Req], sync: str, middle: Middle | None = None) -> None:
        """Open every request's connection, send them together, read the answers, run
        ``middle`` once every status is known, and read every stream to its end (bounded)."""
        racers: list[Racer | None] = [None] * len(reqs)

        async def open_one(i: int) -> None:
            racers[i] = await self._open(reqs[i], withhold=sync == "last-byte")

        async with trio.open_nursery() as nursery:
            for i in range(len(reqs)):
                nursery.start_soon(open_one, i)
        live = [(req, r) for req, r in zip(reqs, racers, strict=True) if r is not None]
        try:
            async with trio.open_nursery() as readers:
                for _, racer in live:
                    readers.start_soon(racer.read_response)
                if sync == "last-byte":
                    for _, racer in live:  # one tight loop, no checkpoint between sends
                        try:
                            racer.send_last_byte_nowait()
                        except OSError as exc:
                            _send_failed(racer, exc)
                else:
                    async with trio.open_nursery() as senders:
                        for _, racer in live:
                            senders.start_soon(_send_whole, racer)
                with trio.move_on_after(ANSWER_S):
                    for _, racer in live:
                        await racer.answered.wait()
                if middle is not None:
                    await middle(live)
                with trio.move_on_after(DRAIN_S):
                    for _, racer in live:
                        await racer.finished.wait()
                for req, racer in live:
                    req.timed_out = not racer.finished.is_set() and not req.disconnected
                readers.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for req in reqs:
                    # No hold outlives its action, except a disconnected client's: ending
                    # that run is the service's job (a release would let it finish instead).
                    if not req.disconnected:
                        self.provider.release(req.nonce)
                for req, racer in live:
                    await racer.aclose()
                    _record(req, racer)

    def racer(self, req: Req) -> Racer:
        """The request of ``req``: a turn as the race engine sends it, to its instance."""
        assert self.requests is not None
        return self.requests.racer(race_text(req.nonce, "soak"), req.chat_id, req.instance)

    async def _open(self, req: Req, withhold: bool) -> Racer | None:
        racer = self.racer(req)
        try:
            with trio.fail_after(CONNECT_S):
                await racer.connect()
                if withhold:
                    await racer.send_prefix()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            req.error = f"connect: {type(exc).__name__}"
            await racer.aclose()
            return None
        return racer


def run_id_of(racer: Racer) -> str | None:
    stream = racer.response.stream
    return None if stream is None else stream.run_id


async def disconnect(req: Req, racer: Racer) -> None:
    """The client goes away mid-stream (a stream that already ended is left as it is)."""
    if not racer.finished.is_set():
        req.disconnected = True
        await racer.aclose()


def _send_failed(racer: Racer, exc: BaseException) -> None:
    racer.response.error = f"send failed: {type(exc).__name__}"
    racer.answered.set()
    racer.finished.set()


async def _send_whole(racer: Racer) -> None:
    try:
        await racer.send_whole()
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        _send_failed(racer, exc)


def _record(req: Req, racer: Racer) -> None:
    resp = racer.response
    req.status, req.sent_ns, req.headers_ns = resp.status, racer.sent_ns, resp.headers_ns
    req.error = req.error or resp.error
    if resp.stream is not None:
        req.run_id, req.chat_out = resp.stream.run_id, resp.stream.chat_id
        req.terminal, req.done = resp.stream.terminal, resp.stream.done
        req.findings = len(resp.stream.findings)
