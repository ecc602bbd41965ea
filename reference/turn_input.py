"""Validation of the ``POST /stream`` body (protocol.md §2): errors name the field and type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from raceharness.reference.web import bad_request, parse_uuid, type_name

MAX_MESSAGES = 1000


@dataclass(frozen=True)
class TurnInput:
    chat_id: UUID | None
    user_text: str


def parse_turn(body: dict[str, Any]) -> TurnInput:
    chat_id = parse_uuid(body.get("chatId"), "chatId", required=False)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages: required")
    if not isinstance(messages, list):
        raise bad_request(f"messages: expected an array, got {type_name(messages)}")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"messages: at most {MAX_MESSAGES} items, got {len(messages)}")
    last_user: list[str] | None = None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: expected an object, got {type_name(message)}")
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"{where}.role: expected a string, got {type_name(role)}")
        parts = message.get("parts", [])
        if not isinstance(parts, list):
            raise bad_request(f"{where}.parts: expected an array, got {type_name(parts)}")
        texts: list[str] = []
        for j, part in enumerate(parts):
            pwhere = f"{where}.parts[{j}]"
            if not isinstance(part, dict):
                raise bad_request(f"{pwhere}: expected an object, got {type_name(part)}")
            if part.get("type") != "text":
                continue
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{pwhere}.text: expected a string, got {type_name(text)}")
            if "\x00" in text:
                raise bad_request(f"{pwhere}.text: contains a NUL character")
            if not text.isascii():
                try:  # JSON may escape a lone surrogate ("\ud800"): not storable as UTF-8
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise bad_request(
                        f"{pwhere}.text: contains a lone surrogate (not valid Unicode)") from None
            texts.append(text)
        if role == "user":
            last_user = texts
    user_text = "".join(last_user or [])
    if not user_text.strip():
        raise bad_request("messages: no user message with non-empty text")
    return TurnInput(chat_id=chat_id, user_text=user_text)
