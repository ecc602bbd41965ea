"""Server-sent events (``protocol.md`` §3), parsed incrementally: bytes in, frames out.

Theory of operation
-------------------
A small state machine, fed in order. It does no I/O, reads no clock and imports no event loop:
the I/O shell hands it bytes as they arrive, and ``harness check`` can replay the same bytes
offline and get the same answer. Checking the order of the frames (``start`` first, one
terminal, then ``[DONE]``) is :class:`raceharness.core.ui_stream.UiStream`'s, fed with what
this parser returns.

:class:`SseParser` turns bytes into :class:`Frame` values, following the WHATWG EventSource
rules that matter here. A line ends at ``\\n``, ``\\r\\n`` or ``\\r``; a blank line ends an
event; ``data:`` lines (one optional space after the colon) are joined with ``\\n``; a line
starting with ``:`` is a comment (the ``: ping`` heartbeat), counted in ``comments``;
``event:``, ``id:`` and ``retry:`` are legal and ignored; a leading UTF-8 BOM is skipped. An
event whose data is ``[DONE]`` is the done sentinel; any other data must be a JSON object with
a string ``type``. An event with no ``data:`` line dispatches nothing.

Whatever the server sends, the outcome is data: each problem is a :class:`Finding` with a
stable ``code`` and the byte ``offset`` where it was seen, and parsing goes on with the next
event. Exceptions are kept for *our* bugs (feeding after close, feeding ``str``); they are
raised before any state changes, so the object stays usable for inspection.

Chunking never matters: the frames, findings and counts depend only on the bytes, never on how
they were split. Lines are decoded only when complete (so a UTF-8 character split across chunks
is whole when decoded), a ``\\r`` at the end of a chunk is remembered so that a ``\\n`` opening
the next chunk completes the same ``\\r\\n`` rather than ending an empty line, and the size cap
counts content bytes by position, so it trips on the same line whatever the chunking.

Memory is bounded: an event whose lines hold more than ``max_event_bytes`` (default 1 MiB) of
content is reported once (``oversize-event``) and its bytes are dropped until the blank line that
ends it.

Offsets are absolute byte offsets from the start of the stream (a BOM counts). A frame's
``offset`` and the offset of a finding about an event are those of the event's first line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_EVENT_BYTES = 1 << 20
DONE_DATA = "[DONE]"

SSE_FINDING_CODES = frozenset({
    "bad-json", "not-an-object", "missing-type", "unknown-field-line", "bad-utf8",
    "oversize-event", "truncated",
})

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_IGNORED_FIELDS = frozenset({"event", "id", "retry"})


class SseUsageError(RuntimeError):
    """The caller misused a parser (our bug, not the server's): e.g. fed it after ``close()``."""


@dataclass(frozen=True)
class Frame:
    """One dispatched event: a JSON object with a string ``type``, or the ``[DONE]`` sentinel.

    ``offset`` (where the event began) is not part of equality, so expected frames can be
    written as ``Frame({"type": "finish"})``.
    """

    data: dict[str, Any] | None
    done: bool = False
    offset: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.done != (self.data is None):
            raise ValueError(f"a frame is [DONE] iff it has no data: done={self.done!r}, "
                             f"data={self.data!r}")
        if self.data is not None and not isinstance(self.data.get("type"), str):
            raise ValueError(f"a frame needs a string type: data={self.data!r}")

    @property
    def type(self) -> str:
        if self.data is None:
            return DONE_DATA
        kind: str = self.data["type"]
        return kind


DONE = Frame(None, done=True)


@dataclass(frozen=True)
class Finding:
    """Malformed framing or a protocol violation by the server, recorded as data."""

    code: str
    message: str
    offset: int


def encode_frame(frame: Frame) -> bytes:
    """The wire form the protocol prescribes: ``data: <json>\\n\\n`` (compact JSON, UTF-8)."""
    if frame.data is None:
        return b"data: [DONE]\n\n"
    try:
        text = json.dumps(frame.data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return f"data: {text}\n\n".encode()
    except UnicodeEncodeError:  # a lone surrogate: only the \\u escape can carry it
        text = json.dumps(frame.data, allow_nan=False, separators=(",", ":"))
        return f"data: {text}\n\n".encode()


def _excerpt(text: str | bytes, limit: int = 60) -> str:
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class SseParser:
    """Bytes in, :class:`Frame` values out; problems go to ``findings``. See the module doc."""

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES,
                 event_typed: bool = False) -> None:
        self.max_event_bytes = max_event_bytes
        # ``event_typed``: the frame's type is the event's ``event:`` name ("message" when
        # none) and its data any JSON value, kept as ``{"type": name, "data": value}`` (a run
        # event stream such as LangGraph's, whose data carry no ``type``).
        self.event_typed = event_typed
        self._event_name = ""
        self.findings: list[Finding] = []
        self.comments = 0
        self.closed = False
        self._offset = 0  # absolute offset of the next byte to arrive
        self._skip_lf = False  # the last chunk ended with "\r": a leading "\n" belongs to it
        self._line = bytearray()  # the incomplete line's bytes (empty once oversize)
        self._line_len = 0  # the incomplete line's length, kept even when its bytes are not
        self._line_start = 0
        self._event_start: int | None = None  # None between events
        self._event_size = 0
        self._oversize = False
        self._data: list[str] = []

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume one chunk, however split; return the frames it completed."""
        if self.closed:
            raise SseUsageError("feed() after close()")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"feed() takes bytes, got {type(data).__name__}")
        chunk = bytes(data)
        frames: list[Frame] = []
        pos = 0
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                pos = 1
                self._line_start += 1
        for match in _LINE_END.finditer(chunk, pos):
            self._grow(chunk[pos:match.start()])
            line, line_len, line_start = bytes(self._line), self._line_len, self._line_start
            self._line.clear()
            self._line_len = 0
            self._line_start = self._offset + match.end()
            pos = match.end()
            if pos == len(chunk) and match.group() == b"\r":
                self._skip_lf = True
            frame = self._end_line(line, line_len, line_start)
            if frame is not None:
                frames.append(frame)
        self._grow(chunk[pos:])
        self._offset += len(chunk)
        return frames

    def close(self) -> list[Frame]:
        """End of stream. An event not ended by a blank line is dropped, as EventSource does,
        and reported as ``truncated``; so this returns no frames (it mirrors ``feed`` so that
        callers can write ``frames += parser.close()``). A second call does nothing."""
        if self.closed:
            return []
        self.closed = True
        if self._event_start is not None:
            self._find("truncated", self._event_start,
                       f"the stream ended inside an event: "
                       f"bytes={self._offset - self._event_start!r} after its start, no blank line")
        return []

    # -- internals -------------------------------------------------------------------------

    def _find(self, code: str, offset: int, message: str) -> None:
        self.findings.append(Finding(code, message, offset))

    def _grow(self, piece: bytes) -> None:
        """Add content bytes (no line ending) to the current line and event."""
        if not piece:
            return
        if self._event_start is None:
            self._event_start = self._line_start
        self._line_len += len(piece)
        self._event_size += len(piece)
        if not self._oversize and self._event_size > self.max_event_bytes:
            self._oversize = True
            self._data.clear()
            self._line.clear()
            self._find("oversize-event", self._event_start,
                       f"event over max_event_bytes={self.max_event_bytes!r}; dropped")
        if not self._oversize:
            self._line += piece

    def _end_line(self, line: bytes, line_len: int, line_start: int) -> Frame | None:
        skipped = len(_BOM) if line_start == 0 and line.startswith(_BOM) else 0
        if line_len == skipped:
            return self._end_event()
        if self._oversize:
            return None
        content = line[skipped:]
        if content.startswith(b":"):
            self.comments += 1
            return None
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._find("bad-utf8", line_start + skipped + exc.start,
                       f"invalid UTF-8 ({exc.reason}) in line={_excerpt(content)}")
            text = content.decode("utf-8", errors="replace")
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_name = value
        elif name not in _IGNORED_FIELDS:
            self._find("unknown-field-line", line_start,
                       f"unknown SSE field name={_excerpt(name)} "
                       f"(expected data, event, id, retry or a ':' comment)")
        return None

    def _end_event(self) -> Frame | None:
        start, lines, oversize = self._event_start, self._data, self._oversize
        event, self._event_name = self._event_name or "message", ""
        self._event_start, self._data, self._oversize, self._event_size = None, [], False, 0
        if oversize or not lines or start is None:
            return None
        return self._decode(start, "\n".join(lines), event)

    def _decode(self, offset: int, text: str, event: str = "message") -> Frame | None:
        if text == DONE_DATA and not self.event_typed:
            return Frame(None, done=True, offset=offset)
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) else "nested too deep"
            self._find("bad-json", offset, f"event data is not JSON ({detail}): "
                                           f"data={_excerpt(text)}")
            return None
        if self.event_typed:
            return Frame({"type": event, "data": value}, offset=offset)
        if not isinstance(value, dict):
            self._find("not-an-object", offset,
                       f"event data is JSON {type(value).__name__}, not an object: "
                       f"data={_excerpt(text)}")
            return None
        if not isinstance(value.get("type"), str):
            self._find("missing-type", offset,
                       f"event object has no string type: type={value.get('type')!r}")
            return None
        return Frame(value, offset=offset)
