"""The embedded journal: per-process memory, bounded by count and age per conversation and by the
number of conversations it holds.

Each envelope is kept once, as the frozen ``Envelope`` that was appended (it holds no transport
state: encoded frames live in the delivery path's bounded caches), and ``read`` hands out those same
objects.

Retention runs on access and in a periodic ``sweep`` (the gateway owns the task): a conversation
whose envelopes all expired, or the least recently appended one beyond ``max_conversations``, is
retired to a tombstone that keeps only ``seq``, ``first`` and the cursor. Its seq therefore goes on
where it stopped, and a viewer resuming from an older cursor is told ``stale`` (expired), never
resumed at the wrong place. Tombstones are bounded too: one is forgotten only once the wall clock in
ms has passed its seq, since a new incarnation starts there (see ``JournalHead``).
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import ctypes.util
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.envelope import Envelope
from gateway.errors import JournalConflict
from gateway.journal.base import JournalHead

TOMBSTONES_PER_CONVERSATION = 4
MIN_TOMBSTONES = 1000


@dataclass(slots=True)
class _Conversation:
    first: int
    seq: int = 0
    cursor: str | None = None
    envelopes: deque[Envelope] = field(default_factory=deque)


_RETIRED: deque[Envelope] = deque()  # shared by every tombstone, never appended to


def _never(conversation_id: str) -> bool:
    return False


def _ignore(conversation_id: str) -> None:
    return None


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def _return_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc): envelope bodies are malloc'd one by one, and
    without it a retired conversation's memory stayed in the process as free heap (RSS crept ~1 MiB
    per round of 8 expired conversations while the Python heap stayed flat under tracemalloc)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class MemoryJournal:
    """Journal in process memory: not durable, but a restart starts new, larger seqs (see JournalHead)."""

    def __init__(
        self,
        max_events: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
        *,
        max_conversations: int = 10_000,
    ) -> None:
        self._max_events = max_events
        self._max_age_ms = int(max_age_s * 1000)
        self._clock = clock
        self._max_conversations = max_conversations
        self._max_tombstones = max(MIN_TOMBSTONES, TOMBSTONES_PER_CONVERSATION * max_conversations)
        self._convs: dict[str, _Conversation] = {}  # least recently appended first
        self._tombstones: dict[str, _Conversation] = {}  # retired: no envelopes; oldest retired first
        # Wired by the gateway: a conversation with viewers or an upstream here is evicted last, and
        # the hub forgets what it derived from a journal that was retired while nobody used it.
        self.in_use: Callable[[str], bool] = _never
        self.on_retired: Callable[[str], None] = _ignore
        self.sweep_interval_s = min(30.0, max(0.5, max_age_s / 8))

    @property
    def conversations(self) -> int:
        """Conversations with retained envelopes (tombstones not counted)."""
        return len(self._convs)

    async def head(self, conversation_id: str) -> JournalHead:
        conv = self._convs.get(conversation_id)
        if conv is not None:
            self._trim(conv, self._cutoff())
            if not conv.envelopes:
                self._retire(conversation_id, conv)
        else:
            conv = self._tombstones.get(conversation_id)
            if conv is None:
                return JournalHead()
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
        conv = self._convs.get(conversation_id) or self._tombstones.get(conversation_id)
        if conv is None:
            if not envelopes or envelopes[0].seq < 1:
                raise JournalConflict(f"{conversation_id}: a new journal starts with an envelope")
            conv = _Conversation(first=envelopes[0].seq, seq=envelopes[0].seq - 1)
        expected = conv.seq + 1
        for i, env in enumerate(envelopes):
            if env.seq != expected + i:
                raise JournalConflict(f"{conversation_id}: expected seq {expected + i}, got {env.seq}")
        if cursor is not None:
            conv.cursor = cursor
        if not envelopes:
            return  # a cursor alone: the conversation stays where it is (retained or retired)
        if self._tombstones.pop(conversation_id, None) is not None:
            conv.envelopes = deque()
        self._convs.pop(conversation_id, None)
        self._convs[conversation_id] = conv  # most recently appended last
        conv.envelopes.extend(envelopes)
        conv.seq = envelopes[-1].seq
        self._trim(conv, self._cutoff())
        if len(self._convs) > self._max_conversations:
            self._evict_one(spare=conversation_id)

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        conv = self._convs.get(conversation_id)
        if conv is None or limit <= 0:
            return []
        self._trim(conv, self._cutoff())
        envs = conv.envelopes
        if not envs or after >= conv.seq:
            return []
        # seqs are dense inside the deque, so the index is arithmetic.
        start = max(0, after + 1 - envs[0].seq)
        stop = min(len(envs), start + limit)
        return [envs[i] for i in range(start, stop)]

    def sweep(self) -> int:
        """Apply age retention to every conversation now, read or not; returns how many were retired."""
        cutoff = self._cutoff()
        retired = 0
        for conversation_id, conv in list(self._convs.items()):
            if conv.envelopes and conv.envelopes[0].created_ms >= cutoff:
                continue
            self._trim(conv, cutoff)
            if not conv.envelopes:
                self._retire(conversation_id, conv)
                retired += 1
        self._bound_tombstones()
        return retired

    async def run_sweeper(self) -> None:
        """Sweep every ``sweep_interval_s`` until cancelled (a task the gateway owns)."""
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            if self.sweep():
                _return_free_memory()

    def _cutoff(self) -> int:
        return int(self._clock() * 1000) - self._max_age_ms

    def _trim(self, conv: _Conversation, cutoff: int) -> None:
        envs = conv.envelopes
        while len(envs) > self._max_events:
            envs.popleft()
        if envs and envs[0].created_ms < cutoff:
            # created_ms is non-decreasing along the deque: binary search the first keeper.
            keep = bisect.bisect_left(envs, cutoff, key=lambda e: e.created_ms)
            for _ in range(keep):
                envs.popleft()

    def _retire(self, conversation_id: str, conv: _Conversation) -> None:
        """Drop the conversation's envelopes; its seq, first and cursor stay as a tombstone."""
        del self._convs[conversation_id]
        conv.envelopes = _RETIRED
        self._tombstones[conversation_id] = conv
        if not self.in_use(conversation_id):
            self.on_retired(conversation_id)

    def _evict_one(self, spare: str) -> None:
        """Retire the least recently appended conversation nobody uses here (the oldest if all are used)."""
        victim = next((c for c in self._convs if c != spare and not self.in_use(c)), None)
        if victim is None:
            victim = next(iter(self._convs))  # never ``spare``: it was just appended, so it is last
        self._retire(victim, self._convs[victim])
        self._bound_tombstones()

    def _bound_tombstones(self) -> None:
        excess = len(self._tombstones) - self._max_tombstones
        if excess <= 0:
            return
        now_ms = int(self._clock() * 1000)
        # Oldest first, skipping any whose seq the clock has not passed: a new incarnation of it
        # would start below that seq, and a viewer's old cursor would look valid there.
        doomed: list[str] = []
        for conversation_id, tombstone in self._tombstones.items():
            if tombstone.seq < now_ms:
                doomed.append(conversation_id)
                if len(doomed) == excess:
                    break
        for conversation_id in doomed:
            del self._tombstones[conversation_id]

    async def close(self) -> None:
        self._convs.clear()
        self._tombstones.clear()
