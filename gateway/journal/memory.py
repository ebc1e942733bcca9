"""The embedded journal: per-process memory, bounded by count and age."""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.envelope import Envelope
from gateway.errors import JournalConflict
from gateway.journal.base import JournalHead


@dataclass(slots=True)
class _Conversation:
    first: int
    seq: int = 0
    cursor: str | None = None
    envelopes: deque[Envelope] = field(default_factory=deque)


class MemoryJournal:
    """Journal in process memory: not durable, but a restart starts new, larger seqs (see JournalHead)."""

    def __init__(self, max_events: int, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self._max_events = max_events
        self._max_age_ms = int(max_age_s * 1000)
        self._clock = clock
        self._convs: dict[str, _Conversation] = {}

    async def head(self, conversation_id: str) -> JournalHead:
        conv = self._convs.get(conversation_id)
        if conv is None:
            return JournalHead()
        self._trim(conv)
        oldest = conv.envelopes[0].seq if conv.envelopes else conv.seq + 1
        return JournalHead(conv.seq, oldest, conv.cursor, conv.first)

    async def append(
        self,
        conversation_id: str,
        envelopes: Sequence[Envelope],
        cursor: str | None,
        *,
        owner: str | None = None,
    ) -> None:
        if not envelopes and cursor is None:
            return
        conv = self._convs.get(conversation_id)
        if conv is None:
            if not envelopes or envelopes[0].seq < 1:
                raise JournalConflict(f"{conversation_id}: a new journal starts with an envelope")
            conv = _Conversation(first=envelopes[0].seq, seq=envelopes[0].seq - 1)
        expected = conv.seq + 1
        for i, env in enumerate(envelopes):
            if env.seq != expected + i:
                raise JournalConflict(f"{conversation_id}: expected seq {expected + i}, got {env.seq}")
        self._convs[conversation_id] = conv
        conv.envelopes.extend(envelopes)
        if envelopes:
            conv.seq = envelopes[-1].seq
        if cursor is not None:
            conv.cursor = cursor
        self._trim(conv)

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        conv = self._convs.get(conversation_id)
        if conv is None or limit <= 0:
            return []
        self._trim(conv)
        envs = conv.envelopes
        if not envs or after >= conv.seq:
            return []
        # seqs are dense inside the deque, so the index is arithmetic.
        start = max(0, after + 1 - envs[0].seq)
        stop = min(len(envs), start + limit)
        return [envs[i] for i in range(start, stop)]

    def _trim(self, conv: _Conversation) -> None:
        envs = conv.envelopes
        while len(envs) > self._max_events:
            envs.popleft()
        cutoff = int(self._clock() * 1000) - self._max_age_ms
        if envs and envs[0].created_ms < cutoff:
            # created_ms is non-decreasing along the deque: binary search the first keeper.
            keep = bisect.bisect_left(envs, cutoff, key=lambda e: e.created_ms)
            for _ in range(keep):
                envs.popleft()

    async def close(self) -> None:
        self._convs.clear()
