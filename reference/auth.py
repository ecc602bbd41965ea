"""Users and bearer tokens: tokens are stored as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import time
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

_CACHE_TTL_S = 30.0


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        return None
    return token


class Authenticator:
    """Maps a bearer token to a user id, with a short positive cache (tokens are not revoked)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._cache: dict[bytes, tuple[UUID, float]] = {}

    async def user_for(self, token: str | None) -> UUID | None:
        if token is None:
            return None
        digest = hash_token(token)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT token_hash, user_id FROM ai_api_tokens WHERE token_hash = %s", (digest,))
            row = await cur.fetchone()
        if row is None or not hmac.compare_digest(bytes(row[0]), digest):
            return None
        self._cache[digest] = (row[1], now + _CACHE_TTL_S)
        return row[1]


def ensure_user_sync(dsn: str, name: str, token: str) -> UUID:
    """Create a user holding ``token`` (idempotent: an existing token keeps its user)."""
    digest = hash_token(token)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT user_id FROM ai_api_tokens WHERE token_hash = %s",
                           (digest,)).fetchone()
        if row is not None:
            return row[0]
        user = conn.execute("INSERT INTO ai_users (name) VALUES (%s) RETURNING id",
                            (name,)).fetchone()
        assert user is not None
        conn.execute("INSERT INTO ai_api_tokens (token_hash, user_id) VALUES (%s, %s)",
                     (digest, user[0]))
        return user[0]
