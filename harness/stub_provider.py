"""A minimal OpenAI-compatible streaming provider for ``serve-reference``.

Temporary: the race engine's attributing fake provider replaces it. It streams a fixed
answer, one word per chunk, ``interval_s`` apart, then ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ANSWER = "This is the reference stub provider answering your turn."


def _chunk(content: str) -> bytes:
    body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "stub", "choices": [{"index": 0, "delta": {"content": content},
                                          "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def create_stub_provider(interval_s: float = 0.05) -> Starlette:
    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
        if not isinstance(body, dict) or body.get("stream") is not True:
            return JSONResponse({"error": {"message": "only stream=true is supported"}},
                                status_code=400)

        async def tokens() -> AsyncIterator[bytes]:
            for i, word in enumerate(ANSWER.split(" ")):
                yield _chunk(word if i == 0 else " " + word)
                await asyncio.sleep(interval_s)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(tokens(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
