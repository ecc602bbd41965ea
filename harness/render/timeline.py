"""A trial's timeline as inline SVG: one lane per request, times in ms from the release. Pure.

Lanes, in invoke order: every ``turn`` (setup, racers, released, …), every ``stop`` and every
observer call (``runs``/``run``); then provider calls whose nonce matches no turn. On a turn's
lane: the last byte sent (tick), the first byte of the answer (dot, coloured by status: 200,
409, 5xx, other, no answer), the first SSE frame (diamond), the end of the stream (bar), and
the provider call carrying the turn's nonce as a thin bar underneath (arrival → first token →
disconnect or completion). A provider call gets a lane of its own when no turn's nonce matches
it, when it is a contact (a connection closed before a whole request), or when several racers
got 200 on its racer's chat: the nonce of the last user message may then be another winner's,
so the lane says "attribution ambiguous" instead of drawing the call on one racer's lane. A
dashed vertical line marks each ``/stop``; the solid one at 0 the release. Every mark has a
hover ``<title>`` with the op's details; a value the history does not hold is left out (or shown
as "—"), never printed as "None".

The time axis is broken so that the burst is readable: the racers' span (from the release, or
the first racer's last byte if earlier, to the last racer's answer, first frame or provider
call, plus a small margin) is drawn at one scale and gets at least :data:`FOCUS_SHARE` of the
width; what comes before it (the set-up turn, the "before" observation) gets at most
:data:`BEFORE_SHARE` and what comes after it (the hold, the stop, the released turn, the
cleanup) at most :data:`AFTER_SHARE`, each at a smaller scale of its own when it would take
more. A compressed stretch is shaded, its ticks are its own, and a break mark on the axis says
what it holds. A trial without a racer that got an answer is drawn at one scale.

The history comes from the system under test, so values are read leniently (a wrong type is
drawn as absent, never raised) and every string is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from raceharness.core.history import Op, Trial
from raceharness.render.text import clean

MAX_LANES = 240
LABEL_W, PLOT_X, PLOT_W, AXIS_H, LANE_H = 250, 262, 880, 34, 18
WIDTH = PLOT_X + PLOT_W + 24
BEFORE_SHARE, AFTER_SHARE = 0.10, 0.25  # at most, of PLOT_W, for what precedes / follows
FOCUS_SHARE = 1 - BEFORE_SHARE - AFTER_SHARE  # at least, for the racers' span
TICK_PX, TICK_GAP_PX = 110, 44   # about one tick per 110 px; none closer than 44 px
STATUS_COLOURS = {"s200": "#2e7d32", "s409": "#1565c0", "s5xx": "#c62828",
                  "sother": "#ef6c00", "none": "#757575"}


def _ns(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _value(op: Op | None) -> dict[str, Any]:
    return op.value if op is not None and isinstance(op.value, dict) else {}


def esc(value: Any, limit: int = 2000) -> str:
    """Text for HTML/SVG: cleaned, cut at ``limit`` and escaped; a missing value is "—"."""
    return escape("—" if value is None else clean(value, limit), quote=True)


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


def _ticks(lo: float, hi: float, count: int = 8) -> list[float]:
    """Round instants from ``lo`` to ``hi``, about ``count`` of them."""
    raw = (hi - lo) / max(1, count) or 1.0
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def _instants(timeline: Timeline) -> list[float]:
    found = [0.0, *timeline.stops]
    for lane in timeline.lanes:
        found += [at for _, at, _ in lane.marks]
        if lane.span is not None:
            found += [t for t in lane.span if t is not None]
        for arrival, token, end, _, _ in lane.provider:
            found += [t for t in (arrival, token, end) if t is not None]
    return found


def racers_span(timeline: Timeline) -> tuple[float, float] | None:
    """From the first racer's last byte (or the release, if earlier) to the last racer's
    answer, first frame or provider call (ms); None when no racer was answered. A winner's
    stream end is left out: it is the hold, not the burst."""
    racers = [lane for lane in timeline.lanes if lane.role == "racer"]
    sent = [at for lane in racers for kind, at, _ in lane.marks if kind == "sent"]
    later = [at for lane in racers for kind, at, _ in lane.marks if kind in ("headers", "frame")]
    later += [t for lane in racers for arrival, token, _, _, _ in lane.provider
              for t in (arrival, token) if t is not None]
    if not later:
        return None
    first = min(sent, default=min(later))
    if timeline.from_release:
        first = min(first, 0.0)
    return first, max(later)


@dataclass(frozen=True)
class Segment:
    t0: float   # ms
    t1: float
    x0: float   # px
    x1: float
    compressed: bool = False

    @property
    def scale(self) -> float:  # px per ms
        return (self.x1 - self.x0) / (self.t1 - self.t0)


@dataclass(frozen=True)
class Axis:
    """A piecewise-linear time axis: ``segments`` left to right, each at its own scale."""

    segments: tuple[Segment, ...]
    focus_index: int = 0

    @property
    def lo(self) -> float:
        return self.segments[0].t0

    @property
    def hi(self) -> float:
        return self.segments[-1].t1

    def x(self, t: float) -> float:
        seg = next((g for g in self.segments if t <= g.t1), self.segments[-1])
        return seg.x0 + (t - seg.t0) * seg.scale

    def focus(self) -> Segment:
        """The segment drawn at the largest scale: the racers' span when there is one."""
        return self.segments[self.focus_index]


def build_axis(timeline: Timeline) -> Axis:
    """The time axis of ``timeline``: the racers' span at the largest scale (see the module's
    docstring), or one scale when no racer was answered or nothing needs compressing."""
    instants = _instants(timeline)
    lo, hi = min(instants), max(instants)
    pad = (hi - lo) * 0.03 or 1.0
    lo, hi = lo - pad, hi + pad
    whole = Axis((Segment(lo, hi, PLOT_X, PLOT_X + PLOT_W),))
    span = racers_span(timeline)
    if span is None:
        return whole
    margin = max(0.05 * (span[1] - span[0]), 0.25)
    f0, f1 = max(lo, span[0] - margin), min(hi, span[1] + margin)
    total = hi - lo
    before = PLOT_W * min(BEFORE_SHARE, (f0 - lo) / total)
    after = PLOT_W * min(AFTER_SHARE, (hi - f1) / total)
    if f1 <= f0 or (before == PLOT_W * (f0 - lo) / total and after == PLOT_W * (hi - f1) / total):
        return whole  # the racers already have their share at one scale
    x0, x1 = PLOT_X + before, PLOT_X + PLOT_W - after
    focus = Segment(f0, f1, x0, x1)
    segments = []
    if f0 > lo:
        segments.append(Segment(lo, f0, PLOT_X, x0, before / (f0 - lo) < focus.scale * 0.999))
    segments.append(focus)
    index = len(segments) - 1
    if hi > f1:
        segments.append(Segment(f1, hi, x1, PLOT_X + PLOT_W,
                                after / (hi - f1) < focus.scale * 0.999))
    return Axis(tuple(segments), index)


def _axis_ticks(axis: Axis) -> list[float]:
    """Each segment's own round instants, the focus segment's first; none closer than
    :data:`TICK_GAP_PX` to one already placed."""
    placed: list[float] = []
    focus = axis.focus()
    for seg in [focus, *(g for g in axis.segments if g is not focus)]:
        count = max(2, round((seg.x1 - seg.x0) / TICK_PX))
        for t in _ticks(seg.t0, seg.t1, count):
            if seg.t0 <= t <= seg.t1 and all(abs(axis.x(t) - axis.x(p)) >= TICK_GAP_PX
                                             for p in placed):
                placed.append(t)
    return sorted(placed)


def _compressed_note(axis: Axis) -> str:
    focus = axis.focus()
    parts = [f"before {focus.t0:+.1f} ms" if seg.t1 <= focus.t0 else f"after {focus.t1:+.1f} ms"
             for seg in axis.segments if seg.compressed]
    return f"; compressed (shaded): {' and '.join(parts)}" if parts else ""


def render_svg(timeline: Timeline) -> str:
    """The timeline as one ``<svg>`` element (no external reference, no script)."""
    axis = build_axis(timeline)
    hi = axis.hi

    def x(t: float) -> str:
        return f"{axis.x(t):.1f}"

    height = AXIS_H + LANE_H * len(timeline.lanes) + 8
    bottom = height - 8
    unit = "ms from release" if timeline.from_release else "ms from the first op"
    out = [f'<svg class="timeline" width="{WIDTH}" '
           f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-label="timeline, {unit}">']
    for k, lane in enumerate(timeline.lanes):
        y = AXIS_H + k * LANE_H
        fill = "#fde2e2" if lane.offending else ("#f5f5f5" if k % 2 else "#ffffff")
        out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE_H}" fill="{fill}"/>')
    focus = axis.focus()
    for seg in axis.segments:
        if not seg.compressed:
            continue
        ratio = focus.scale / seg.scale
        out.append(f'<rect class="compressed" x="{seg.x0:.1f}" y="{AXIS_H - 4}" '
                   f'width="{seg.x1 - seg.x0:.1f}" height="{bottom - AXIS_H + 4}"/>')
        edge = seg.x1 if seg.t1 <= focus.t0 else seg.x0
        out.append(f'<g class="break"><title>axis compressed: {seg.t0:+.1f} to {seg.t1:+.1f} '
                   f"ms drawn {ratio:.0f}× smaller than the racers' span</title>"
                   f'<rect x="{edge - 4:.1f}" y="{AXIS_H - 20}" width="8" height="16"/>'
                   f'<path d="M{edge - 6:.1f},{AXIS_H - 4} l4,-14 M{edge + 2:.1f},{AXIS_H - 4} '
                   f'l4,-14"/></g>')
    for t in _axis_ticks(axis):
        tick = "0" if abs(t) < 1e-9 else f"{t:+g}"
        out.append(f'<line class="grid" x1="{x(t)}" y1="{AXIS_H - 4}" x2="{x(t)}" '
                   f'y2="{bottom}"/><text class="tick" x="{x(t)}" y="{AXIS_H - 8}">'
                   f'{tick}</text>')
    out.append(f'<text class="unit" x="{PLOT_X}" y="11">{esc(unit + _compressed_note(axis))}'
               "</text>")
    out.append(f'<line class="release" x1="{x(0)}" y1="{AXIS_H - 4}" x2="{x(0)}" y2="{bottom}">'
               f'<title>release at 0 ms</title></line>')
    for at in timeline.stops:
        out.append(f'<line class="stop" x1="{x(at)}" y1="{AXIS_H - 4}" x2="{x(at)}" '
                   f'y2="{bottom}"><title>/stop sent at {at:+.3f} ms</title></line>')
    for k, lane in enumerate(timeline.lanes):
        out.append(_lane_svg(lane, AXIS_H + k * LANE_H + LANE_H / 2, x, hi))
    out.append("</svg>")
    return "".join(out)


def _lane_svg(lane: Lane, y: float, x: Any, hi: float) -> str:
    colour = STATUS_COLOURS[lane.status_class]
    label = clean(lane.label, 40)
    parts = [f'<g class="lane"><text class="label" x="{LABEL_W}" y="{y + 4:.1f}">'
             f'<title>{esc(lane.title, 6000)}</title>{esc(label)}</text>']
    if lane.span is not None:
        start, end = lane.span
        dash = ' stroke-dasharray="4 3"' if end is None else ""
        parts.append(f'<line class="life" x1="{x(start)}" y1="{y:.1f}" '
                     f'x2="{x(hi if end is None else end)}" y2="{y:.1f}"{dash}/>')
    for arrival, token, end, end_kind, title in lane.provider:
        stop = hi if end is None else end
        parts.append(f'<g class="call"><title>{esc(title)}</title>'
                     f'<rect x="{x(arrival)}" y="{y + 4:.1f}" height="3" width="'
                     f'{max(1.0, float(x(stop)) - float(x(arrival))):.1f}"/>')
        if token is not None:
            parts.append(f'<circle cx="{x(token)}" cy="{y + 5.5:.1f}" r="2"/>')
        if end is not None:
            parts.append(f'<line class="{end_kind}" x1="{x(end)}" y1="{y + 2:.1f}" '
                         f'x2="{x(end)}" y2="{y + 9:.1f}"/>')
        parts.append("</g>")
    if len(lane.provider) > 1:  # calls on one nonce overlap: say how many
        right = max((end if end is not None else hi) for _, _, end, _, _ in lane.provider)
        parts.append(f'<text class="calls" x="{float(x(right)) + 4:.1f}" y="{y + 8:.1f}">'
                     f"{len(lane.provider)} provider calls</text>")
    for kind, at, title in lane.marks:
        tip = f"<title>{esc(title)}</title>"
        if kind == "sent":
            parts.append(f'<line class="sent" x1="{x(at)}" y1="{y - 5:.1f}" x2="{x(at)}" '
                         f'y2="{y + 5:.1f}">{tip}</line>')
        elif kind == "headers":
            parts.append(f'<circle cx="{x(at)}" cy="{y:.1f}" r="4.5" fill="{colour}">'
                         f'{tip}</circle>')
        elif kind == "frame":
            cx = float(x(at))
            points = f"{cx:.1f},{y - 4:.1f} {cx + 4:.1f},{y:.1f} {cx:.1f},{y + 4:.1f} " \
                     f"{cx - 4:.1f},{y:.1f}"
            parts.append(f'<polygon class="frame" points="{points}" stroke="{colour}">'
                         f'{tip}</polygon>')
        else:
            parts.append(f'<rect class="end" x="{float(x(at)) - 1.5:.1f}" y="{y - 5:.1f}" '
                         f'width="3" height="10">{tip}</rect>')
    parts.append("</g>")
    return "".join(parts)
