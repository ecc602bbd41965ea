"""HTTP plumbing shared by the routes: error bodies, the success wrapper, bounded body reads.

Errors are never wrapped: ``{"statusCode", "message", "code"?}``; successes are
``{"data": ..., "success": true, "status": 200}`` (protocol.md §1).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse

from raceharness.reference.errors import RunAlreadyActiveError

CONFLICT_MESSAGE = "An agent run is already in progress for this chat"
BEGIN_FAILED_MESSAGE = "Could not start the agent run. Please try again."


class HttpError(Exception):
    """An error answer decided before any byte of the response is written."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"statusCode": self.status, "message": self.message}
        if self.code is not None:
            body["code"] = self.code
        body.update(self.extra)
        return JSONResponse(body, status_code=self.status)


def unauthorized() -> HttpError:
    return HttpError(401, "Unauthorized")


def forbidden() -> HttpError:
    return HttpError(403, "Forbidden")


def bad_request(message: str) -> HttpError:
    return HttpError(400, message, "A_BAD_REQUEST")


def conflict(exc: RunAlreadyActiveError) -> HttpError:
    active = None if exc.active_run_id is None else str(exc.active_run_id)
    return HttpError(409, CONFLICT_MESSAGE, "A_RUN_ALREADY_ACTIVE", activeRunId=active)


def begin_failed() -> HttpError:
    return HttpError(503, BEGIN_FAILED_MESSAGE, "A_RUN_BEGIN_FAILED")


def ok(data: Any) -> JSONResponse:
    return JSONResponse({"data": data, "success": True, "status": 200})


def type_name(value: Any) -> str:
    """The JSON type of a decoded value, for messages that must not echo the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """Read at most ``max_bytes`` of body and decode a JSON object, else 413 / 400."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise HttpError(413, f"Request body exceeds {max_bytes} bytes",
                                "A_PAYLOAD_TOO_LARGE")
        except ValueError:
            raise bad_request("content-length: not an integer") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HttpError(413, f"Request body exceeds {max_bytes} bytes", "A_PAYLOAD_TOO_LARGE")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("body: expected a JSON object, got an empty body")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request(f"body: expected a JSON object, got {type_name(body)}")
    return body


def parse_uuid(value: Any, field: str, *, required: bool) -> UUID | None:
    """A uuid field: absent/null allowed unless ``required``; the message names the field."""
    if value is None:
        if required:
            raise bad_request(f"{field}: required")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{field}: expected a uuid string, got {type_name(value)}")
    try:
        return UUID(value)
    except ValueError:
        raise bad_request(f"{field}: not a valid uuid") from None
