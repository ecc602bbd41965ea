"""OpenAI-compatible streaming chat completions over httpx (protocol.md §6).

``open`` sends the request and checks the status; ``tokens`` relays ``choices[0].delta.content``
until ``data: [DONE]``; ``aclose`` closes the response, so the provider sees the disconnect.
Every failure becomes :class:`ProviderError` with a message safe for clients (no key).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx

from raceharness.reference.errors import ProviderError
from raceharness.reference.settings import Settings


class ProviderClient:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self._settings = settings
        self._url = settings.provider_base_url.rstrip("/") + "/chat/completions"
        timeout = httpx.Timeout(settings.provider_read_timeout_s,
                                connect=settings.provider_connect_timeout_s)
        # One connection per call is what stop relies on: closing a half-read response drops it.
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport,
                                         limits=httpx.Limits(max_connections=None,
                                                             max_keepalive_connections=0))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _safe(self, text: str) -> str:
        key = self._settings.provider_api_key
        if key:
            text = text.replace(key, "***")
        return text[:500]

    async def open(self, messages: list[dict[str, str]]) -> ProviderStream:
        headers = {"accept": "text/event-stream"}
        if self._settings.provider_api_key:
            headers["authorization"] = f"Bearer {self._settings.provider_api_key}"
        body = {"model": self._settings.provider_model, "stream": True, "messages": messages}
        request = self._client.build_request("POST", self._url, json=body, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise ProviderError("provider timed out") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            raise ProviderError(self._safe(
                f"provider answered {response.status_code}: {_error_message(raw)}"))
        return ProviderStream(response, self._safe)


class ProviderStream:
    def __init__(self, response: httpx.Response, safe: Any) -> None:
        self._response = response
        self._safe = safe
        network = response.extensions.get("network_stream")
        self._socket: Any = None if network is None else network.get_extra_info("socket")

    def abort(self) -> None:
        """Shut the provider's connection down now, whatever its reader is doing: the provider
        sees the disconnect at once and a pending read ends. (A duplicate of the descriptor is
        shut down, so the event loop still owns and closes the original.)"""
        sock = self._socket
        fd = -1 if sock is None else sock.fileno()
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            dup = socket.fromfd(fd, sock.family, sock.type)
            try:
                dup.shutdown(socket.SHUT_RDWR)
            finally:
                dup.close()

    async def tokens(self) -> AsyncIterator[str]:
        done = False
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise ProviderError("provider sent malformed data") from None
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise ProviderError(self._safe(_error_message(json.dumps(chunk).encode())))
                content = _delta_content(chunk)
                if content:
                    yield content
        except httpx.TimeoutException as exc:
            raise ProviderError("provider timed out") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider connection failed: {type(exc).__name__}") from exc
        if not done:
            raise ProviderError("provider stream ended before [DONE]")

    async def aclose(self) -> None:
        await self._response.aclose()


def _delta_content(chunk: Any) -> str | None:
    try:
        content = chunk["choices"][0]["delta"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return content if isinstance(content, str) else None


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:200] or "no body"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return body["message"]
    return "unexpected error body"
