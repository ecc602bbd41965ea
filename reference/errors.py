"""Domain errors of the run gate and the provider, mapped to HTTP once, in ``http.py``."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

ConflictPath = Literal["precheck", "gate"]


class RunAlreadyActiveError(Exception):
    """The chat already has an active run: the caller lost (or came after) the race.

    ``path`` says which guard answered: the fast ``precheck`` or the INSERT ``gate``.
    ``active_run_id`` is the holder's id, ``None`` only if the holder ended meanwhile.
    """

    def __init__(self, chat_id: UUID, active_run_id: UUID | None, path: ConflictPath) -> None:
        super().__init__(f"chat {chat_id} already has an active run ({active_run_id}, {path})")
        self.chat_id = chat_id
        self.active_run_id = active_run_id
        self.path: ConflictPath = path


class RunBeginFailedError(Exception):
    """Begin failed for a reason other than the gate (database down, another constraint)."""


class ProviderError(Exception):
    """The provider failed: non-200, error event, timeout, or dropped connection.

    The message is safe to show to a client: it never contains the provider key.
    """
