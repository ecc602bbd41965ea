"""A hand-written OpenAPI 3.1 description of every route of the app (protocol.md §1-§4).

Self-contained: every ``$ref`` points into ``#/components``. Served at ``GET /openapi.json``.
"""

from __future__ import annotations

from typing import Any

from raceharness.reference.schema import RUN_STATUSES
from raceharness.reference.store import RUNS_PAGE_DEFAULT, RUNS_PAGE_MAX

_UUID: dict[str, Any] = {"type": "string", "format": "uuid"}
_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ERROR_REF)}


def _wrapped(data: dict[str, Any], description: str) -> dict[str, Any]:
    """A non-stream success: ``{"data": ..., "success": true, "status": 200}``."""
    return {"description": description, "content": _json({
        "type": "object", "required": ["data", "success", "status"],
        "properties": {"data": data, "success": {"const": True}, "status": {"const": 200}},
    })}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": _json(schema)}


_E400 = _error("Body not JSON, not an object, or a field of the wrong type (A_BAD_REQUEST)")
_E401 = _error("Missing or unknown bearer token")
_E403 = _error("The chat or run does not exist, is deleted, or belongs to another user")
_E413 = _error("Request body over 1 MiB (A_PAYLOAD_TOO_LARGE)")
_E503 = _error("The database is unavailable (A_UNAVAILABLE)")

_RUN: dict[str, Any] = {
    "type": "object",
    "required": ["id", "chatId", "status", "error", "stepCount", "stopRequestedAt", "startedAt",
                 "finishedAt", "createdAt", "updatedAt", "leaseExpiresAt"],
    "properties": {
        "id": _UUID, "chatId": _UUID,
        "status": {"type": "string", "enum": list(RUN_STATUSES)},
        "error": {"type": ["string", "null"]},
        "stepCount": {"type": "integer", "minimum": 0},
        "stopRequestedAt": _TIME, "startedAt": _TIME, "finishedAt": _TIME,
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
        "leaseExpiresAt": _TIME,
    },
}

_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "chatId", "role", "content", "status", "metadata", "createdAt",
                 "updatedAt"],
    "properties": {
        "id": _UUID, "chatId": _UUID,
        "role": {"type": "string", "enum": ["user", "assistant", "system"]},
        "content": {"type": "string"},
        "status": {"type": "string", "enum": ["streaming", "completed", "error", "aborted"]},
        "metadata": {"type": "object"},
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
}

_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["statusCode", "message"],
    "properties": {
        "statusCode": {"type": "integer"},
        "message": {"type": "string"},
        "code": {"type": "string"},
        "activeRunId": {"oneOf": [_UUID, {"type": "null"}]},
    },
}

_TURN: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "chatId": {**_UUID, "description": "Existing chat; absent = create a new chat"},
        "messages": {
            "type": "array",
            "description": "The client's transcript; only the last user message's text is used",
            "items": {
                "type": "object", "required": ["role", "parts"],
                "properties": {
                    "id": {"type": "string"},
                    "role": {"type": "string"},
                    "parts": {"type": "array", "items": {
                        "type": "object", "required": ["type"],
                        "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                    }},
                },
            },
        },
    },
}

_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_PUBLIC: list[dict[str, list[str]]] = []

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "AI-chat run protocol (reference server)", "version": "1"},
    "security": _SECURED,
    "paths": {
        "/api/ai-chat/stream": {"post": {
            "operationId": "stream",
            "summary": "Start a turn (a run) and stream it",
            "requestBody": _body(_TURN),
            "responses": {
                "200": {
                    "description": "The run's UI message stream (Vercel AI SDK v6, SSE)",
                    "headers": {"x-run-id": {"schema": _UUID}},
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _E400, "401": _E401, "403": _E403,
                "409": _error("An active run holds the chat (A_RUN_ALREADY_ACTIVE, activeRunId)"),
                "413": _E413,
                "503": _error("The run could not begin (A_RUN_BEGIN_FAILED) or the database is "
                              "unavailable (A_UNAVAILABLE)"),
            },
        }},
        "/api/ai-chat/stop": {"post": {
            "operationId": "stop",
            "summary": "Stop a run, by run id or by chat",
            "requestBody": _body({
                "type": "object", "description": "runId or chatId: one is required",
                "properties": {"runId": _UUID, "chatId": _UUID},
            }),
            "responses": {
                "200": _wrapped({"type": "object", "required": ["stopped"],
                                 "properties": {"stopped": {"type": "boolean"}}},
                                "Whether a live run was aborted or an active row marked"),
                "400": _E400, "401": _E401, "403": _E403, "413": _E413, "503": _E503,
            },
        }},
        "/api/ai-chat/run": {"post": {
            "operationId": "latestRun",
            "summary": "The chat's latest run and its assistant message",
            "requestBody": _body({"type": "object", "required": ["chatId"],
                                  "properties": {"chatId": _UUID}}),
            "responses": {
                "200": _wrapped({
                    "type": "object", "required": ["run", "message"],
                    "properties": {"run": {"oneOf": [_ref("Run"), {"type": "null"}]},
                                   "message": {"oneOf": [_ref("Message"), {"type": "null"}]}},
                }, "The latest run (created_at DESC, id DESC), or nulls"),
                "400": _E400, "401": _E401, "403": _E403, "413": _E413, "503": _E503,
            },
        }},
        "/api/ai-chat/runs": {"get": {
            "operationId": "listRuns",
            "summary": "The runs of a chat, newest first, a page at a time",
            "parameters": [
                {"name": "chatId", "in": "query", "required": True, "schema": _UUID},
                {"name": "status", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(RUN_STATUSES)}},
                {"name": "limit", "in": "query", "required": False,
                 "description": f"Runs per page (default {RUNS_PAGE_DEFAULT})",
                 "schema": {"type": "integer", "minimum": 1, "maximum": RUNS_PAGE_MAX,
                            "default": RUNS_PAGE_DEFAULT}},
                {"name": "cursor", "in": "query", "required": False,
                 "description": "The nextCursor of the previous page (opaque)",
                 "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _wrapped({
                    "type": "object", "required": ["items", "nextCursor"],
                    "properties": {
                        "items": {"type": "array", "items": _ref("Run"),
                                  "maxItems": RUNS_PAGE_MAX},
                        "nextCursor": {"type": ["string", "null"],
                                       "description": "Pass as cursor for the next page; "
                                                      "null on the last page"},
                    },
                }, "A page of the chat's runs (created_at DESC, id DESC)"),
                "400": _E400, "401": _E401, "403": _E403, "503": _E503,
            },
        }},
        "/healthz": {"get": {
            "operationId": "healthz",
            "summary": "Liveness and database reachability",
            "security": _PUBLIC,
            "responses": {
                "200": {"description": "The database answers", "content": _json(_ref("Health"))},
                "503": {"description": "The database does not answer",
                        "content": _json(_ref("Health"))},
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics",
            "summary": "Prometheus text exposition",
            "security": _PUBLIC,
            "responses": {"200": {"description": "Prometheus text format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": _PUBLIC,
            "responses": {"200": {"description": "The OpenAPI 3.1 description",
                                  "content": _json({"type": "object"})}},
        }},
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Run": _RUN,
            "Message": _MESSAGE,
            "Error": _ERROR,
            "Health": {
                "type": "object", "required": ["status"],
                "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]},
                               "instance": {"type": "string"},
                               "faults": {"type": "array", "items": {"type": "string"}},
                               "autonomousRuns": {"type": "boolean"}},
            },
        },
    },
}
