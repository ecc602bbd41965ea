"""A trial's timeline (:mod:`raceharness.render.timeline`) as inline SVG. Pure.

One row per lane, the marks of :class:`~raceharness.render.timeline.Lane` drawn on it; a dashed
vertical line marks each ``/stop``, the solid one at 0 the release. Every mark has a hover
``<title>``, and every string is escaped here.

The time axis is broken so that the burst is readable: the racers' span (from the release, or
the first racer's last byte if earlier, to the last racer's answer, first frame or provider
call, plus a small margin) is drawn at one scale and gets at least :data:`FOCUS_SHARE` of the
width; what comes before it (the set-up turn, the "before" observation) gets at most
:data:`BEFORE_SHARE` and what comes after it (the hold, the stop, the released turn, the
cleanup) at most :data:`AFTER_SHARE`, each at a smaller scale of its own when it would take
more. A compressed stretch is shaded, its ticks are its own, and a break mark on the axis says
what it holds. A trial without a racer that got an answer is drawn at one scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any

from raceharness.render.text import clean
from raceharness.render.timeline import Lane, Timeline

LABEL_W, PLOT_X, PLOT_W, AXIS_H, LANE_H = 250, 262, 880, 34, 18
WIDTH = PLOT_X + PLOT_W + 24
BEFORE_SHARE, AFTER_SHARE = 0.10, 0.25  # at most, of PLOT_W, for what precedes / follows
FOCUS_SHARE = 1 - BEFORE_SHARE - AFTER_SHARE  # at least, for the racers' span
TICK_PX, TICK_GAP_PX = 110, 44   # about one tick per 110 px; none closer than 44 px
STATUS_COLOURS = {"s200": "#2e7d32", "s409": "#1565c0", "s5xx": "#c62828",
                  "sother": "#ef6c00", "none": "#757575"}


def esc(value: Any, limit: int = 2000) -> str:
    """Text for HTML/SVG: cleaned, cut at ``limit`` and escaped; a missing value is "—"."""
    return escape("—" if value is None else clean(value, limit), quote=True)


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
