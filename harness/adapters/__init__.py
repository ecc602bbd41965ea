"""Target adapters: the one place a target's wire shape lives (see ``base.py``).

Built in: ``ai-chat`` (this project's protocol, docs/protocol.md; the default) and
``langgraph`` (the LangGraph Agent Server, declared in ``langgraph.toml`` as a profile v2
template). Chosen with ``--adapter NAME`` or ``adapter = "..."`` in a target profile; a
profile with ``adapter = "template"`` declares a new server of the same family without code.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
BUILTIN_ADAPTERS: dict[str, str] = {
    "ai-chat": "this project's protocol (docs/protocol.md): the default",
    "langgraph": "the LangGraph Agent Server (langgraph-api 0.16; multitask_strategy reject)",
}


def builtin_profile_data(name: str) -> dict[str, Any]:
    """A built-in template adapter's profile, as TOML tables."""
    return tomllib.loads((_HERE / f"{name}.toml").read_text(encoding="utf-8"))
