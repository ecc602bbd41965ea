"""The UI-message stream (``protocol.md`` §3): the order of an SSE stream's frames, checked.

Theory of operation
-------------------
:class:`UiStream` is a small state machine fed, in order, the frames that
:class:`~raceharness.core.sse.SseParser` returns; like the parser it does no I/O and reads no
clock. It checks ``start`` first, carrying ``messageMetadata.runId`` and ``.chatId``; exactly
one terminal frame (``finish``, ``error`` or ``abort``); then ``[DONE]``; then nothing. The
terminal/done rules are the table ``_LIFECYCLE``. It also records what a client would learn
(``run_id``, ``text``, ...). Unknown frame types pass without a finding: the stream format
grows.

Each problem is a :class:`~raceharness.core.sse.Finding` with a stable ``code`` and the byte
offset of the frame it is about; :func:`parse_stream` parses and checks a whole stream, its
findings and the parser's in offset order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from raceharness.core.sse import SSE_FINDING_CODES, Finding, Frame, SseParser, SseUsageError

TERMINAL_TYPES = frozenset({"finish", "error", "abort"})

STREAM_FINDING_CODES = frozenset({
    "start-not-first", "start-missing-run-id", "start-missing-chat-id", "second-start",
    "second-terminal", "no-terminal", "done-before-terminal", "frame-after-terminal", "no-done",
    "frame-after-done", "error-missing-text", "text-start-missing-id", "text-delta-unknown-part",
    "text-delta-not-string", "text-end-unknown-part",
})
FINDING_CODES = SSE_FINDING_CODES | STREAM_FINDING_CODES

Phase = Literal["streaming", "ended", "done"]
Kind = Literal["terminal", "done", "other"]

# (phase, kind of frame) -> (next phase, finding code or None). The "done" phase is absorbing:
# every later frame is "frame-after-done" and is otherwise ignored.
_LIFECYCLE: dict[tuple[Phase, Kind], tuple[Phase, str | None]] = {
    ("streaming", "other"): ("streaming", None),
    ("streaming", "terminal"): ("ended", None),
    ("streaming", "done"): ("done", "done-before-terminal"),
    ("ended", "other"): ("ended", "frame-after-terminal"),
    ("ended", "terminal"): ("ended", "second-terminal"),
    ("ended", "done"): ("done", None),
}
_LIFECYCLE_MESSAGES = {
    "done-before-terminal": "[DONE] before any finish, error or abort frame",
    "frame-after-terminal": "frame type={type!r} after the terminal frame terminal={terminal!r}",
    "second-terminal": "terminal frame type={type!r} after terminal={terminal!r}",
}


class UiStream:
    """Checks a sequence of frames against ``protocol.md`` §3, one frame at a time."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.run_id: str | None = None
        self.chat_id: str | None = None
        self.message_id: str | None = None
        self.terminal: str | None = None
        self.done = False
        self.types: list[str] = []
        self.text = ""
        self.error_text: str | None = None
        self.closed = False
        self._phase: Phase = "streaming"
        self._started = False
        self._open_parts: set[str] = set()
        self._last_offset = 0

    @property
    def started(self) -> bool:
        """The start frame was seen (a racer counts as answered)."""
        return self._started

    def on_frame(self, frame: Frame, offset: int) -> None:
        if self.closed:
            raise SseUsageError("on_frame() after close()")
        first = not self.types
        self.types.append(frame.type)
        self._last_offset = offset
        if self._phase == "done":
            self._find("frame-after-done", offset, f"frame type={frame.type!r} after [DONE]")
            return
        if first and frame.type != "start":
            self._find("start-not-first", offset,
                       f"first frame type={frame.type!r}, expected 'start'")
        kind: Kind = ("done" if frame.done
                      else "terminal" if frame.type in TERMINAL_TYPES else "other")
        self._phase, code = _LIFECYCLE[(self._phase, kind)]
        if code is not None:
            self._find(code, offset, _LIFECYCLE_MESSAGES[code].format(type=frame.type,
                                                                     terminal=self.terminal))
        if frame.data is None:
            self.done = True
            return
        if kind == "terminal" and code is None:
            self.terminal = frame.type
        handler = self._HANDLERS.get(frame.type)
        if handler is not None and code != "second-terminal":
            handler(self, frame.data, offset)

    def close(self, end_offset: int | None = None) -> None:
        """End of stream: report what never came. ``end_offset`` (the stream's length, when
        known) locates these findings; by default, the last frame's offset. Idempotent."""
        if self.closed:
            return
        self.closed = True
        at = self._last_offset if end_offset is None else end_offset
        if not self.types:
            self._find("start-not-first", at, "the stream ended with no frame, expected 'start'")
        if self.terminal is None:
            self._find("no-terminal", at, "the stream ended with no finish, error or abort frame")
        if not self.done:
            self._find("no-done", at, "the stream ended with no [DONE]")

    # -- per-type checks -------------------------------------------------------------------

    def _find(self, code: str, offset: int, message: str) -> None:
        self.findings.append(Finding(code, message, offset))

    def _on_start(self, data: dict[str, Any], offset: int) -> None:
        if self._started:
            self._find("second-start", offset, "a second start frame")
            return
        self._started = True
        meta = data.get("messageMetadata")
        meta = meta if isinstance(meta, dict) else {}
        run_id, chat_id, message_id = meta.get("runId"), meta.get("chatId"), data.get("messageId")
        if isinstance(run_id, str) and run_id:
            self.run_id = run_id
        else:
            self._find("start-missing-run-id", offset,
                       f"start frame without messageMetadata.runId: runId={run_id!r}")
        if isinstance(chat_id, str) and chat_id:
            self.chat_id = chat_id
        else:
            self._find("start-missing-chat-id", offset,
                       f"start frame without messageMetadata.chatId: chatId={chat_id!r}")
        if isinstance(message_id, str):
            self.message_id = message_id

    def _on_error(self, data: dict[str, Any], offset: int) -> None:
        text = data.get("errorText")
        if isinstance(text, str):
            self.error_text = text
        else:
            self._find("error-missing-text", offset, f"error frame errorText={text!r}")

    def _on_text_start(self, data: dict[str, Any], offset: int) -> None:
        part = data.get("id")
        if isinstance(part, str):
            self._open_parts.add(part)
        else:
            self._find("text-start-missing-id", offset, f"text-start id={part!r}")

    def _on_text_delta(self, data: dict[str, Any], offset: int) -> None:
        part, delta = data.get("id"), data.get("delta")
        if not (isinstance(part, str) and part in self._open_parts):
            self._find("text-delta-unknown-part", offset,
                       f"text-delta id={part!r} is not an open text part")
        if isinstance(delta, str):
            self.text += delta
        else:
            self._find("text-delta-not-string", offset, f"text-delta delta={delta!r}")

    def _on_text_end(self, data: dict[str, Any], offset: int) -> None:
        part = data.get("id")
        if isinstance(part, str) and part in self._open_parts:
            self._open_parts.remove(part)
        else:
            self._find("text-end-unknown-part", offset,
                       f"text-end id={part!r} is not an open text part")

    _HANDLERS: ClassVar[dict[str, Callable[[UiStream, dict[str, Any], int], None]]] = {
        "start": _on_start,
        "error": _on_error,
        "text-start": _on_text_start,
        "text-delta": _on_text_delta,
        "text-end": _on_text_end,
    }


def parse_stream(raw: bytes) -> tuple[list[Frame], UiStream]:
    """Parse and check a whole stream. The returned stream's ``findings`` hold the parser's
    findings too, all in offset order (the parser's first at the same offset)."""
    parser = SseParser()
    frames = parser.feed(raw) + parser.close()
    stream = UiStream()
    for frame in frames:
        stream.on_frame(frame, frame.offset)
    stream.close(end_offset=len(raw))
    stream.findings[:] = sorted([*parser.findings, *stream.findings], key=lambda f: f.offset)
    return frames, stream
