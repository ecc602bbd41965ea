"""The UI message stream (Vercel AI SDK v6) frames of protocol.md §3, as SSE bytes."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
    (b"x-accel-buffering", b"no"),
]


def frame(type_: str, **fields: Any) -> bytes:
    """``data: {"type": ..., ...}\\n\\n`` with ``type`` first and compact JSON."""
    payload = {"type": type_, **fields}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def start(message_id: str, chat_id: str, run_id: str | None) -> bytes:
    meta: dict[str, Any] = {"chatId": chat_id}
    if run_id is not None:
        meta["runId"] = run_id
    return frame("start", messageId=message_id, messageMetadata=meta)


def text_delta(part_id: str, delta: str) -> bytes:
    return frame("text-delta", id=part_id, delta=delta)


def error(text: str) -> bytes:
    return frame("error", errorText=text)
