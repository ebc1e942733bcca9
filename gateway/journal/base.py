"""The journal contract: dense per-conversation seq, envelopes, and the upstream cursor, together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.envelope import Envelope


@dataclass(frozen=True, slots=True)
class JournalHead:
    """Where a conversation's journal stands.

    ``seq`` is the last seq assigned (0: no journal); ``oldest`` the oldest retained seq
    (``seq + 1`` when nothing is retained); ``first`` the first seq of this journal incarnation
    (0: no journal); ``cursor`` the HQ ``id:`` of the last upstream event journaled with it.

    A new incarnation (the first append, or one after retention expired the whole journal) starts
    at the wall clock in milliseconds, so its seqs exceed any seq a viewer may still hold from an
    earlier incarnation: an old cursor is detected as expired, never silently resumed.
    """

    seq: int = 0
    oldest: int = 1
    cursor: str | None = None
    first: int = 0

    @property
    def exists(self) -> bool:
        return self.seq > 0

    @property
    def empty(self) -> bool:
        return self.oldest > self.seq


class Journal(Protocol):
    """Storage of envelopes per conversation. Implementations: memory and Redis."""

    async def head(self, conversation_id: str) -> JournalHead:
        """The current head; a conversation without a journal has ``JournalHead()``."""
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

        ``envelopes[0].seq`` must be ``head.seq + 1`` (any positive seq when no journal exists)
        and the seqs dense; when ``owner`` is given the caller must still hold the conversation's
        lease. Otherwise ``JournalConflict`` and nothing is written. A ``cursor`` of None keeps the
        stored one (gateway-originated envelopes).
        """
        ...

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        """Up to ``limit`` retained envelopes with seq > ``after``, in order."""
        ...

    async def close(self) -> None: ...
