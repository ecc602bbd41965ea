"""Preflight against a ``--target``: is the set-up right, before any trial is judged?

A race against a mis-configured deployment proves nothing, and its symptoms read like bugs: a
service whose provider base URL points elsewhere never calls the fake provider, so the provider
properties fail; a wrong token makes every turn 401. So before the first trial the harness
checks, and stops with one line and the exit code of conformance.md §5 when something is off
(no property verdicts at all):

- ``--dsn``: it must connect (else exit 4, naming host and port, never the password) and hold
  the protocol's tables (else exit 2, naming the missing ones);
- one ordinary turn on a new chat must be answered 200 (401/403: the token, exit 2; 404/405:
  the URL or the profile's paths, exit 2; no answer within the bound or any other status:
  exit 4), stream to its end, and — with the fake provider listening — reach the fake provider
  (else exit 4: "the target never called the fake provider at URL").
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

from raceharness.net.http1 import Racer
from raceharness.net.target import Target
from raceharness.runtime import EXIT_UNREACHABLE
from raceharness.runtime import EXIT_USAGE as EXIT_CONFIG
from raceharness.shell.fake_provider import FakeProvider
from raceharness.shell.observe import ServiceClient
from raceharness.trial.context import race_text, settle_terminal, turn_request

TABLES = ("ai_chats", "ai_chat_runs", "ai_chat_messages")


class PreflightError(Exception):
    """The set-up is wrong; ``exit_code`` is 2 (configuration) or 4 (unreachable)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a libpq DSN (URL or key=value), without user or password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise PreflightError(f"--dsn: not a valid libpq connection string ({_first_line(exc)})",
                             EXIT_CONFIG) from None
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or '(default)'}"


def check_database(dsn: str) -> None:
    """Connect read-only and look for the protocol's tables (blocking: run it in a thread)."""
    where = describe_dsn(dsn)
    password = str(conninfo_to_dict(dsn).get("password") or "")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5,
                             options="-c default_transaction_read_only=on") as conn:
            missing = [name for name in TABLES
                       if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)]
    except psycopg.Error as exc:
        reason = _first_line(exc)
        if password:
            reason = reason.replace(password, "***")
        raise PreflightError(f"--dsn: cannot use the database at {where}: {reason}",
                             EXIT_UNREACHABLE) from None
    if missing:
        raise PreflightError(f"--dsn: the database at {where} has no table "
                             f"{', '.join(missing)} (protocol.md §5): is it the service's "
                             "database, and its schema applied?", EXIT_CONFIG)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def preflight_turn(target: Target, provider: FakeProvider | None,
                         provider_url: str | None, bound_s: float) -> dict[str, Any]:
    """One ordinary turn on a new chat, read to its end; raises :class:`PreflightError` when
    it shows the set-up is wrong. Returns what it saw (status, run id, provider calls)."""
    nonce = f"preflight-{secrets.token_hex(4)}"
    if provider is not None:
        previous = provider.mode_for
        provider.mode_for = lambda n: "finish" if n == nonce else previous(n)
    adapter = target.profile.adapter
    chat_id = None
    if not adapter.creates_chat_by_turn:  # the chat first (its adapter's own route)
        chat_id = await _create_chat(target, bound_s)
    method, path, headers, body = turn_request(target, race_text(nonce, "preflight"), chat_id)
    racer = Racer(target.endpoint(), method, path, headers, body)
    racer.chat_id = chat_id
    where = f"{method} {target.base_url.rstrip('/')}{path[len(target.prefix):]}"
    ended = False
    try:
        with trio.move_on_after(bound_s):
            try:
                await racer.connect()
            except OSError as exc:
                raise PreflightError(f"cannot reach the target: {where}: "
                                     f"{exc.strerror or exc}", EXIT_UNREACHABLE) from None
            await racer.send_whole()
            await racer.read_response()
            ended = True
            client = ServiceClient(target)
            try:
                await settle_terminal(client, racer)
            finally:
                await client.aclose()
    finally:
        await racer.aclose()
    resp = racer.response
    status = resp.status
    if status is None:
        raise PreflightError(f"the target did not answer an ordinary turn ({where}) within "
                             f"{bound_s:g} s", EXIT_UNREACHABLE)
    if status in (401, 403):
        raise PreflightError(f"the target refused the token: {status} to {where}; check "
                             "--token (or HARNESS_TOKEN)", EXIT_CONFIG)
    if status in (404, 405):
        raise PreflightError(f"the target answered {status} to {where}: check --target, "
                             f"--adapter ({adapter.name}) and the profile's paths", EXIT_CONFIG)
    run_id = resp.stream.run_id if resp.stream is not None else None
    if status != 200:
        raise PreflightError(f"an ordinary turn on a new chat was answered {status} "
                             f"({where}), not a 200 stream: the target is not ready",
                             EXIT_UNREACHABLE)
    called = provider is not None and bool(provider.calls_for(nonce))
    if provider is not None and not called:
        if not ended:
            await _stop(target, run_id, chat_id)
        wanted = provider_url or provider.base_url
        raise PreflightError(
            f"the target never called the fake provider at {provider.base_url} during an "
            f"ordinary turn: set the target's provider base URL to {wanted}"
            + ("" if provider_url else " (or pass --provider-url with the URL the target "
               "reaches the harness by)"), EXIT_UNREACHABLE)
    if not ended:
        await _stop(target, run_id, chat_id)
        raise PreflightError(f"an ordinary turn did not end within {bound_s:g} s ({where})",
                             EXIT_UNREACHABLE)
    terminal = resp.stream.terminal if resp.stream is not None else None
    if terminal == "error":
        # Without the fake provider, its own provider failing is the likely cause: a race
        # would then read as bugs (runs failing at once, released early), so say it now.
        text = (resp.stream.error_text or "").strip() if resp.stream is not None else ""
        raise PreflightError(
            "an ordinary turn ended with an error frame" + (f" ({text[:200]})" if text else "")
            + ": the target's provider failed"
            + ("" if provider is not None else "; point it at the fake provider with "
               "--provider-listen HOST:PORT"), EXIT_UNREACHABLE)
    return {"status": status, "run_id": run_id, "provider_called": called,
            "terminal": terminal}


async def server_version(target: Target, bound_s: float = 10.0
                         ) -> tuple[str | None, str | None]:
    """The target's server version, as its adapter reads it, and a warning when the adapter
    was not tested against that version (both None when the adapter names no version)."""
    client = ServiceClient(target)
    try:
        with trio.move_on_after(bound_s):
            return await client.server_version()
        return None, f"the target's version route did not answer within {bound_s:g} s"
    except httpx.HTTPError as exc:
        return None, f"the target's version route failed: {type(exc).__name__}"
    finally:
        await client.aclose()


async def _create_chat(target: Target, bound_s: float) -> str:
    client = ServiceClient(target)
    where = f"{target.base_url.rstrip('/')} (adapter {target.profile.adapter.name})"
    try:
        with trio.move_on_after(bound_s):
            status, chat_id = await client.create_chat()
            if status in (401, 403):
                raise PreflightError(f"the target refused the token creating a chat: {status} "
                                     f"at {where}; check --token", EXIT_CONFIG)
            if chat_id is None:
                raise PreflightError(f"creating a chat was answered {status} at {where}: "
                                     "check --target and --adapter", EXIT_CONFIG)
            return chat_id
        raise PreflightError(f"the target did not answer creating a chat at {where} within "
                             f"{bound_s:g} s", EXIT_UNREACHABLE)
    except httpx.ConnectError as exc:
        raise PreflightError(f"cannot reach the target: {where}: {exc}",
                             EXIT_UNREACHABLE) from None
    finally:
        await client.aclose()


async def _stop(target: Target, run_id: str | None, chat_id: str | None = None) -> None:
    """Best effort: leave nothing running behind a failed preflight."""
    if run_id is None:
        return
    client = ServiceClient(target)
    try:
        with trio.move_on_after(5):
            await client.stop(run_id=run_id, chat_id=chat_id)
    except Exception:  # noqa: BLE001, S110 - best effort; the preflight already failed
        pass
    finally:
        await client.aclose()
