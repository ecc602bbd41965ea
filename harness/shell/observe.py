"""Observers: the target's own routes (httpx, through its adapter) and, with a DSN, read-only
SQL on the tables.

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


class ServiceClient:
    """The target's routes other than the raced stream (stop, runs, run, health, chats),
    spoken through its adapter (``target.profile.adapter``)."""

    def __init__(self, target: Target, timeout_s: float = 10.0) -> None:
        self.target = target
        self.adapter = target.profile.adapter
        self._client = httpx.AsyncClient(base_url=target.base_url.rstrip("/"),
                                         timeout=timeout_s, verify=not target.insecure)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self, token: str | None = None) -> dict[str, str]:
        return dict(self.target.auth_headers(token))

    async def stop(self, *, run_id: str | None = None, chat_id: str | None = None,
                   token: str | None = None) -> tuple[int, bool | None]:
        return await self.adapter.stop(self._client, self._headers(token), run_id=run_id,
                                       chat_id=chat_id)

    async def runs(self, chat_id: str, status: str | None = None,
                   token: str | None = None) -> tuple[int, list[dict[str, Any]] | None]:
        code, items, _ = await self.runs_page(chat_id, status, token)
        return code, items

    async def runs_page(self, chat_id: str, status: str | None = None,
                        token: str | None = None
                        ) -> tuple[int, list[dict[str, Any]] | None, bool]:
        """The chat's runs, newest first, statuses mapped onto the protocol's: (status, runs,
        truncated). ``truncated``: more pages follow, so a run missing from the list is not
        evidence it does not exist. Status 0: the target lists no runs."""
        return await self.adapter.runs_page(self._client, self._headers(token), chat_id, status)

    async def latest(self, chat_id: str, token: str | None = None
                     ) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
        """The chat's latest run and its assistant message (wire shapes)."""
        return await self.adapter.latest(self._client, self._headers(token), chat_id)

    async def create_chat(self) -> tuple[int, str | None]:
        return await self.adapter.create_chat(self._client, self._headers())

    async def count_chats(self, chat_id: str) -> tuple[int, int | None]:
        return await self.adapter.count_chats(self._client, self._headers(), chat_id)

    async def run_status(self, chat_id: str, run_id: str) -> str | None:
        return await self.adapter.run_status(self._client, self._headers(), chat_id, run_id)

    async def raw(self, method: str, path: str, token: str | None = None, *,
                  authenticated: bool = True, headers: dict[str, str] | None = None,
                  **kwargs: Any) -> int:
        """Any request to the service; only the status matters (probes)."""
        merged = {**(self._headers(token) if authenticated else {}), **(headers or {})}
        resp = await self._client.request(method, path, headers=merged, **kwargs)
        return resp.status_code

    async def server_version(self) -> tuple[str | None, str | None]:
        """The server's version as the adapter reads it, and a warning when untested."""
        return await self.adapter.server_version(self._client)

    async def health(self) -> int:
        return await self.adapter.health(self._client)


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
