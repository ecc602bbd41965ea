"""A one-node LangGraph chat graph that streams from an OpenAI-compatible provider.

The node sends the thread's whole message history to ``$PROVIDER_BASE_URL/chat/completions``
with ``stream: true`` and reads the SSE answer token by token, so a run stays in flight for as
long as the provider holds its stream open. Message text is forwarded unchanged (in particular
the last user message, which carries the race harness's ``[race:<nonce>]`` marker).

Only ``httpx`` (already a dependency of langgraph-api / langgraph-sdk) and ``langchain-core``
(a dependency of ``langgraph``) are used: no ``langchain-openai``/``openai``/``tiktoken``.

Environment:
  PROVIDER_BASE_URL  e.g. http://127.0.0.1:9000/v1   (required)
  PROVIDER_API_KEY   sent as ``Authorization: Bearer ...``; any dummy value (default "dummy")
  PROVIDER_MODEL     model name put in the request body (default "fake-model")
  PROVIDER_TIMEOUT_S read timeout between stream chunks, seconds (default 300)

The provider call is wrapped in a tiny LangChain ``BaseChatModel`` so tokens appear live in
the ``messages`` / ``messages-tuple`` stream modes; the node also pushes each token to the
``custom`` mode (``{"token": "..."}``). The full reply is appended to the thread as one AI
message when the provider's stream ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph

_ROLE = {"human": "user", "ai": "assistant", "system": "system"}
_client: httpx.AsyncClient | None = None


def _http() -> httpx.AsyncClient:
    # One client per process. verify=False: the provider is plain http on loopback, and it
    # keeps httpx from loading the CA bundle (sync file I/O that blockbuster flags in dev mode).
    global _client
    if _client is None:
        timeout = float(os.environ.get("PROVIDER_TIMEOUT_S", "300"))
        _client = httpx.AsyncClient(
            verify=False, trust_env=False,
            timeout=httpx.Timeout(connect=10.0, read=timeout, write=10.0, pool=10.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=0),
        )
    return _client


def _to_openai(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        role = _ROLE.get(m.type)
        if role is None:  # tool / function / remove markers: not used by this graph
            continue
        content = m.content
        if isinstance(content, list):  # content parts: keep the text parts verbatim
            content = "".join(
                p if isinstance(p, str) else str(p.get("text", ""))
                for p in content
                if isinstance(p, str) or p.get("type") == "text"
            )
        out.append({"role": role, "content": content})
    return out


class ProviderChat(BaseChatModel):
    """Minimal streaming chat model over the OpenAI chat-completions wire (httpx only).

    Being a LangChain chat model, its tokens show up in LangGraph's ``messages`` /
    ``messages-tuple`` stream modes as well as in the ``custom`` events the node writes.
    """

    @property
    def _llm_type(self) -> str:
        return "openai-compatible-httpx"

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        base = os.environ["PROVIDER_BASE_URL"].rstrip("/")
        body = {
            "model": os.environ.get("PROVIDER_MODEL", "fake-model"),
            "messages": _to_openai(messages),
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {os.environ.get('PROVIDER_API_KEY', 'dummy')}"}
        async with _http().stream("POST", f"{base}/chat/completions", json=body,
                                  headers=headers) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:500]
                raise RuntimeError(f"provider answered {resp.status_code}: {detail}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"provider stream error: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    token = (choice.get("delta") or {}).get("content")
                    if token:  # BaseChatModel.astream reports it to the callbacks itself
                        yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        parts = [c.message.content async for c in self._astream(messages, stop, run_manager)]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="".join(parts)))])

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("async only")


model = ProviderChat()


async def call_provider(state: MessagesState) -> dict[str, Any]:
    write = get_stream_writer()
    parts: list[str] = []
    async for chunk in model.astream(state["messages"]):
        if chunk.content:
            parts.append(chunk.content)
            write({"token": chunk.content})
    return {"messages": [AIMessage(content="".join(parts))]}


builder = StateGraph(MessagesState)
builder.add_node("call_provider", call_provider)
builder.add_edge(START, "call_provider")
builder.add_edge("call_provider", END)
graph = builder.compile()
