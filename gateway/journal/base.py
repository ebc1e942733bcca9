"""The journal contract: dense per-conversation seq, envelopes, and the upstream cursor, together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.envelope import Envelope


@dataclass(frozen=True, slots=True)
class JournalHead:
    """Where a conversation's journal stands.

    ``seq`` is the last seq ever assigned (0: none yet); ``oldest`` the oldest retained seq
    (``seq + 1`` when nothing is retained); ``cursor`` the HQ ``id:`` of the last upstream event
    journaled with it (None: never connected).
    """

    seq: int = 0
    oldest: int = 1
    cursor: str | None = None

    @property
    def empty(self) -> bool:
        return self.oldest > self.seq


class Journal(Protocol):
    """Storage of envelopes per conversation. Implementations: memory and Redis."""

    async def head(self, conversation_id: str) -> JournalHead:
        """The current head; a conversation never seen has ``JournalHead()``."""
        ...

    async def append(
        self,
        conversation_id: str,
        envelopes: Sequence[Envelope],
        cursor: str | None,
        *,
        owner: str | None = None,
    ) -> None:
        """Append envelopes and set the cursor in one atomic step.

        ``envelopes[0].seq`` must be ``head.seq + 1`` and the seqs dense; when ``owner`` is given
        the caller must still hold the conversation's lease. Otherwise ``JournalConflict``.
        A ``cursor`` of None keeps the stored one (gateway-originated envelopes).
        """
        ...

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        """Up to ``limit`` retained envelopes with seq > ``after``, in order."""
        ...

    async def close(self) -> None: ...
