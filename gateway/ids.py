"""Identifier and cursor validation shared by every transport (input is hostile by default)."""

from __future__ import annotations

import uuid

from gateway.errors import GatewayError

MAX_SEQ = 2**63 - 1


class BadRequest(GatewayError):
    """A client sent something malformed; the message is safe to show to that client."""


def conversation_id(raw: str) -> str:
    """The canonical (lower-case, hyphenated) form of a UUID conversation id."""
    if len(raw) > 64:
        raise BadRequest("conversationId must be a UUID")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise BadRequest("conversationId must be a UUID") from None


def seq_cursor(raw: str | None, name: str) -> int | None:
    """A resume cursor: absent, or a non-negative integer seq."""
    if raw is None:
        return None
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_SEQ:
        raise BadRequest(f"{name} must be a non-negative integer seq, got {raw[:40]!r}")
    return int(text)
