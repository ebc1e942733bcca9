"""Conversation ids: UUIDs in hyphenated or 32-hex form, kept in canonical lowercase."""

from __future__ import annotations

import re
import uuid

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", re.IGNORECASE)


def parse_conversation_id(raw: str) -> str | None:
    """Return the canonical form of a UUID conversation id, or None when ``raw`` is not one."""
    if not _UUID.fullmatch(raw):
        return None
    return str(uuid.UUID(raw))
