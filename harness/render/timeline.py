"""A trial's timeline: the lanes of its history, times in ms from the release. Pure.

Lanes, in invoke order: every ``turn`` (setup, racers, released, …), every ``stop`` and every
observer call (``runs``/``run``); then provider calls whose nonce matches no turn. On a turn's
lane: the last byte sent (tick), the first byte of the answer (dot, coloured by status: 200,
409, 5xx, other, no answer), the first SSE frame (diamond), the end of the stream (bar), and
the provider call carrying the turn's nonce as a thin bar underneath (arrival → first token →
disconnect or completion). A provider call gets a lane of its own when no turn's nonce matches
it, when it is a contact (a connection closed before a whole request), or when several racers
got 200 on its racer's chat: the nonce of the last user message may then be another winner's,
so the lane says "attribution ambiguous" instead of drawing the call on one racer's lane. Every
``/stop`` is kept as an instant (a dashed line when drawn). Every mark has a hover title with
the op's details; a value the history does not hold is left out (or shown as "—"), never
printed as "None".

The history comes from the system under test, so values are read leniently (a wrong type is
drawn as absent, never raised). Drawing the lanes as inline SVG, on a broken time axis, is
:mod:`raceharness.render.timeline_svg`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from raceharness.core.history import Op, Trial
from raceharness.render.text import clean

MAX_LANES = 240


def _ns(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _value(op: Op | None) -> dict[str, Any]:
    return op.value if op is not None and isinstance(op.value, dict) else {}


def show(value: Any) -> str:
    """A value from the history for a tooltip: ``None`` (at any depth) is "—"."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


@dataclass
class Lane:
    label: str
    title: str
    status_class: str = "none"
    span: tuple[float, float | None] | None = None      # ms; None end: no answer (open)
    marks: list[tuple[str, float, str]] = field(default_factory=list)  # (kind, ms, title)
    provider: list[tuple[float, float | None, float | None, str, str]] = field(
        default_factory=list)  # (arrival, first token, end, end kind, title)
    offending: bool = False
    ops: tuple[int, ...] = ()
    role: str = ""               # a turn's role ("racer", "setup", ...); "" for other lanes


def status_class(status: Any) -> str:
    code = _ns(status)
    if code is None:
        return "none"
    return "s200" if code == 200 else "s409" if code == 409 else (
        "s5xx" if 500 <= code <= 599 else "sother")


class _Clock:
    def __init__(self, trial: Trial) -> None:
        release = _ns(trial.meta.get("release_ns"))
        times = [op.time_ns for op in trial.ops if _ns(op.time_ns) is not None]
        self.origin = release if release is not None else min(times, default=0)
        self.from_release = release is not None

    def ms(self, value: Any) -> float | None:
        ns = _ns(value)
        return None if ns is None else (ns - self.origin) / 1e6


def _details(inv: Op, done: Op | None) -> str:
    """An op pair for a tooltip; values the op does not hold (``None``) are left out."""
    nonce = "" if inv.nonce is None else f", nonce {clean(inv.nonce)}"
    parts = [f"op {show(inv.index)} invoke {clean(inv.f)} (process {show(inv.process)}{nonce})"]
    parts += [f"  {k}: {show(v)}" for k, v in _value(inv).items() if v is not None]
    if done is None:
        parts.append("no completion recorded")
    else:
        parts.append(f"op {show(done.index)} {clean(done.type)}")
        parts += [f"  {k}: {show(v)}" for k, v in _value(done).items()
                  if k != "frames" and v is not None]
        frames = _value(done).get("frames")
        if isinstance(frames, list):
            parts.append(f"  frames: {' '.join(map(show, frames[:40]))}"
                         + (" …" if len(frames) > 40 else ""))
    return "\n".join(parts)


def _turn_lane(inv: Op, done: Op | None, clock: _Clock) -> Lane:
    role = _value(inv).get("role")
    role = "turn" if role is None else clean(role)
    answer = _value(done) if done is not None and done.type != "fail" else {}
    status = answer.get("status")
    label = f"{role} {show(inv.process)}" if role == "racer" else role
    shown = "fail" if done is not None and done.type == "fail" else (
        clean(status) if status is not None else "no answer")
    lane = Lane(label=f"{label} · {shown}", title=_details(inv, done),
                status_class=status_class(status), role=role)
    sent = clock.ms(answer.get("sent_ns", _value(inv).get("sent_ns", inv.time_ns)))
    terminal = answer.get("terminal")
    for kind, key, what in (("headers", "headers_ns", f"first byte, status {shown}"),
                            ("frame", "first_frame_ns", "first SSE frame"),
                            ("end", "end_ns", "stream end" if terminal is None
                             else f"stream end ({clean(terminal)})")):
        at = clock.ms(answer.get(key))
        if at is not None:
            lane.marks.append((kind, at, f"{label}: {what} at {at:+.3f} ms"))
    if sent is not None:
        lane.marks.insert(0, ("sent", sent, f"{label}: last byte sent at {sent:+.3f} ms"))
        ends = [at for kind, at, _ in lane.marks if kind != "sent"]
        closed = done is not None and done.type in ("ok", "fail")
        last = max(ends, default=clock.ms(done.time_ns) if closed and done else None)
        lane.span = (sent, last if closed or answer.get("end_ns") is not None else None)
    return lane


def _call_lane(inv: Op, done: Op | None, clock: _Clock) -> Lane:
    start, end = clock.ms(inv.time_ns), None if done is None else clock.ms(done.time_ns)
    status = _value(done).get("status")
    extra = _value(inv).get("phase") or _value(inv).get("role") or ""
    label = f"/{clean(inv.f)} {clean(extra)}".strip()
    shown = clean(status) if status is not None else (clean(done.type) if done else "no answer")
    lane = Lane(label=f"{label} · {shown}", title=_details(inv, done),
                status_class=status_class(status))
    if start is not None:
        lane.span = (start, end if end is not None else None)
        lane.marks.append(("sent", start, f"{label}: sent at {start:+.3f} ms"))
        if end is not None:
            lane.marks.append(("headers", end, f"{label}: answered {shown} at {end:+.3f} ms"))
    return lane


@dataclass
class Timeline:
    lanes: list[Lane]
    stops: list[float]           # ms of every /stop invoke
    from_release: bool           # times are from meta.release_ns (else from the first op)
    hidden: int = 0              # racer lanes left out (more than MAX_LANES)


def build_timeline(trial: Trial, offending: Iterable[int] = (),
                   winner: int | None = None) -> Timeline:
    """The lanes of ``trial`` (``offending`` op indices highlighted, the lane holding op
    ``winner`` labelled so); past :data:`MAX_LANES`, racers neither offending nor the winner
    are left out, from the last."""
    clock, cited = _Clock(trial), set(offending)
    lanes: list[Lane] = []
    by_nonce: dict[str, Lane] = {}
    stops: list[float] = []
    racer_chat: dict[str, str | None] = {}  # racer nonce → its chat
    wins: dict[str | None, int] = {}        # chat → racers that got 200 on it
    for inv, done in trial.completions():
        if inv.f == "turn" and _value(inv).get("role") == "racer":
            chat = _value(inv).get("chat_id")
            chat = chat if isinstance(chat, str) else None
            if isinstance(inv.nonce, str):
                racer_chat[inv.nonce] = chat
            if done is not None and done.type != "fail" and _ns(_value(done).get("status")) == 200:
                wins[chat] = wins.get(chat, 0) + 1
        lane = (_turn_lane if inv.f == "turn" else _call_lane)(inv, done, clock)
        lane.ops = (inv.index,) if done is None else (inv.index, done.index)
        lane.offending = bool(cited & set(lane.ops))
        if winner in lane.ops:
            lane.label += " · winner"
        lanes.append(lane)
        if inv.f == "turn" and isinstance(inv.nonce, str):
            by_nonce.setdefault(inv.nonce, lane)
        if inv.f == "stop" and (at := clock.ms(inv.time_ns)) is not None:
            stops.append(at)
    for call in trial.provider or ():
        arrival = clock.ms(call.arrival_ns)
        if arrival is None:
            continue
        gone, complete = clock.ms(call.disconnected_ns), clock.ms(call.completed_ns)
        end_kind = "disconnect" if gone is not None else "complete" if complete is not None \
            else "open"
        nonce = "no nonce" if call.nonce is None else f"nonce {clean(call.nonce)}"
        mode = "" if call.mode is None else f", mode {clean(call.mode)}"
        tokens = "" if call.tokens_sent is None else f"{show(call.tokens_sent)} token(s), "
        title = (f"provider call {show(call.index)} ({nonce}{mode}): arrived "
                 f"{arrival:+.3f} ms, first token {_fmt(clock.ms(call.first_token_ns))}, "
                 f"{tokens}disconnected {_fmt(gone)}, completed {_fmt(complete)}")
        contact = call.complete is False
        chat = racer_chat.get(call.nonce, "") if isinstance(call.nonce, str) else ""
        ambiguous = chat != "" and wins.get(chat, 0) > 1
        if contact:
            title += "; a contact: the connection closed before a whole request"
        elif ambiguous:
            title += (f"; attribution ambiguous: {wins[chat]} racers got 200 on the chat, and "
                      "the nonce is the last user message of the history forwarded")
        bar = (arrival, clock.ms(call.first_token_ns), gone if gone is not None else complete,
               end_kind, title)
        owner = None if contact or ambiguous or not isinstance(call.nonce, str) else \
            by_nonce.get(call.nonce)
        if owner is None:
            label = (f"provider contact {show(call.index)} · no request" if contact
                     else f"provider call {show(call.index)} · attribution ambiguous"
                     if ambiguous else f"provider call {show(call.index)} · "
                     + ("no nonce" if call.nonce is None else f"nonce {clean(call.nonce)}"))
            owner = Lane(label=label, title=title, offending=not ambiguous)
            lanes.append(owner)
        owner.provider.append(bar)
    spare = [lane for lane in reversed(lanes) if lane.role == "racer"
             and not lane.offending and winner not in lane.ops]
    drop = {id(lane) for lane in spare[:max(0, len(lanes) - MAX_LANES)]}
    shown = [lane for lane in lanes if id(lane) not in drop]
    return Timeline(shown, stops, clock.from_release, hidden=len(drop))


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:+.3f} ms"
