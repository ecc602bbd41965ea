"""Observers: the protocol's own routes (httpx) and, with a DSN, read-only SQL on the tables.

psycopg's async API does not run on trio, so database reads are sync psycopg in worker threads
behind a ``CapacityLimiter`` sized to the burst. Every connection is read-only
(``default_transaction_read_only``): the harness never writes to a target's database.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import trio

from raceharness.core.history import DbSnapshot, MessageRow, RunRow
from raceharness.net.target import Target

RUNS_PAGE_LIMIT = 200  # the largest /runs page protocol.md §4 allows


class ServiceClient:
    """The protocol routes other than the raced stream: stop, run, runs, health."""

    def __init__(self, target: Target, timeout_s: float = 10.0) -> None:
        self.target = target
        self._client = httpx.AsyncClient(base_url=target.base_url.rstrip("/"),
                                         timeout=timeout_s, verify=not target.insecure)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self, token: str | None = None) -> dict[str, str]:
        return dict(self.target.auth_headers(token))

    async def stop(self, *, run_id: str | None = None, chat_id: str | None = None,
                   token: str | None = None) -> tuple[int, bool | None]:
        body: dict[str, str] = {}
        if run_id:
            body["runId"] = run_id
        if chat_id:
            body["chatId"] = chat_id
        resp = await self._client.post(self.target.profile.paths.stop, json=body,
                                       headers=self._headers(token))
        stopped = _data(resp).get("stopped") if resp.status_code == 200 else None
        return resp.status_code, stopped if isinstance(stopped, bool) else None

    async def runs(self, chat_id: str, status: str | None = None,
                   token: str | None = None) -> tuple[int, list[dict[str, Any]] | None]:
        code, items, _ = await self.runs_page(chat_id, status, token)
        return code, items

    async def runs_page(self, chat_id: str, status: str | None = None,
                        token: str | None = None
                        ) -> tuple[int, list[dict[str, Any]] | None, bool]:
        """``/runs`` (newest first, the largest page the protocol allows): (status, runs,
        truncated). ``truncated`` is True when the service said more pages follow
        (``nextCursor``), so a run missing from the list is not evidence it does not exist."""
        path = self.target.profile.paths.runs
        if not path:
            return 0, None, False
        params = {"chatId": chat_id, "limit": str(RUNS_PAGE_LIMIT),
                  **({"status": status} if status else {})}
        resp = await self._client.get(path, params=params, headers=self._headers(token))
        if resp.status_code != 200:
            return resp.status_code, None, False
        data = _data(resp)
        items = data.get("items")
        if not isinstance(items, list):
            return resp.status_code, None, False
        return resp.status_code, [{"id": i.get("id"), "status": i.get("status")}
                                  for i in items if isinstance(i, dict)], bool(
                                      data.get("nextCursor"))

    async def latest(self, chat_id: str, token: str | None = None
                     ) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        """``/run``: the chat's latest run and its assistant message (wire shapes)."""
        resp = await self._client.post(self.target.profile.paths.run, json={"chatId": chat_id},
                                       headers=self._headers(token))
        if resp.status_code != 200:
            return resp.status_code, None, None
        data = _data(resp)
        run, message = data.get("run"), data.get("message")
        return (resp.status_code, run if isinstance(run, dict) else None,
                message if isinstance(message, dict) else None)

    async def raw(self, method: str, path: str, token: str | None = None, *,
                  authenticated: bool = True, headers: dict[str, str] | None = None,
                  **kwargs: Any) -> int:
        """Any request to the service; only the status matters (probes)."""
        merged = {**(self._headers(token) if authenticated else {}), **(headers or {})}
        resp = await self._client.request(method, path, headers=merged, **kwargs)
        return resp.status_code

    async def health(self) -> int:
        resp = await self._client.get(self.target.profile.paths.health)
        return resp.status_code


def _data(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        return body["data"]  # type: ignore[no-any-return]
    return body if isinstance(body, dict) else {}


class DbObserver:
    """Read-only snapshots of one chat's rows (protocol.md §5 table names)."""

    def __init__(self, dsn: str, limiter_size: int = 8) -> None:
        self.dsn = dsn
        self.limiter = trio.CapacityLimiter(limiter_size)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                               options="-c default_transaction_read_only=on")

    def check(self) -> None:
        """Fail fast (psycopg.Error) when the DSN does not answer or the tables are missing."""
        with self._connect() as conn:
            conn.execute("SELECT 1 FROM ai_chat_runs LIMIT 0")
            conn.execute("SELECT 1 FROM ai_chat_messages LIMIT 0")

    async def snapshot(self, chat_id: str, label: str) -> DbSnapshot:
        return await trio.to_thread.run_sync(self._snapshot, chat_id, label,
                                             limiter=self.limiter)

    def _snapshot(self, chat_id: str, label: str) -> DbSnapshot:
        with self._connect() as conn:
            runs = conn.execute(
                "SELECT id::text, chat_id::text, status, "
                "(extract(epoch from created_at) * 1000000)::bigint "
                "FROM ai_chat_runs WHERE chat_id = %s ORDER BY created_at, id",
                (chat_id,)).fetchall()
            messages = conn.execute(
                "SELECT id::text, chat_id::text, role, status, left(content, 200) "
                "FROM ai_chat_messages WHERE chat_id = %s ORDER BY created_at, id",
                (chat_id,)).fetchall()
        return DbSnapshot(label=label, time_ns=time.monotonic_ns(),
                          runs=tuple(RunRow(*r) for r in runs),
                          messages=tuple(MessageRow(*m) for m in messages))
