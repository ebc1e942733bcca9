"""One simulated conversation: its event journal, live subscribers and idempotency keys."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import orjson

from gateway.protocols.sse import encode_event

# HQ `?scope=user` strips diagnostic and accounting data (seed 000, "scope").
USER_HIDDEN_EVENTS = frozenset({"agent_active", "token_usage"})
USER_HIDDEN_FIELDS = {"tool_call": ("args_digest",)}
MAX_IDEMPOTENCY_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """A journaled event with its SSE frame pre-encoded once per scope (None: hidden from that scope)."""

    id: int
    event: str
    data: bytes
    frame: bytes
    user_frame: bytes | None


def stamp(data: object) -> object:
    """``data`` with ``emitted_at_ms`` (now) added when it is a JSON object that lacks one."""
    if isinstance(data, dict) and "emitted_at_ms" not in data:
        return {**data, "emitted_at_ms": time.time() * 1000.0}
    return data


def encode_journal_event(event_id: int, event: str, data: object | bytes) -> JournalEvent:
    """Serialize ``data`` (bytes are sent as they are) and both scopes' frames."""
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    frame = encode_event(raw, event=event, id=event_id)
    user_frame: bytes | None = frame
    if event in USER_HIDDEN_EVENTS:
        user_frame = None
    elif event in USER_HIDDEN_FIELDS and isinstance(data, dict):
        hidden = USER_HIDDEN_FIELDS[event]
        stripped = {k: v for k, v in data.items() if k not in hidden}
        user_frame = encode_event(orjson.dumps(stripped), event=event, id=event_id)
    return JournalEvent(event_id, event, raw, frame, user_frame)


class Subscriber:
    """A live listener's bounded backlog; overflowing it marks the listener lagged."""

    def __init__(self, max_pending: int) -> None:
        self._pending: deque[JournalEvent] = deque()
        self._wake = asyncio.Event()
        self._max_pending = max_pending
        self.lagged = False

    def offer(self, event: JournalEvent) -> None:
        if self.lagged:
            return
        if len(self._pending) >= self._max_pending:
            # Like HQ: a lagging client is told `stale` and resumes from the journal.
            self.lagged = True
            self._pending.clear()
        else:
            self._pending.append(event)
        self._wake.set()

    def drain(self) -> list[JournalEvent]:
        events = list(self._pending)
        self._pending.clear()
        self._wake.clear()
        return events

    async def wait(self, timeout: float) -> bool:
        """Wait until something was offered; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True


class Conversation:
    """Journal, subscribers and submit history of one conversation."""

    def __init__(self, conv_id: str, journal_max: int) -> None:
        self.id = conv_id
        self.title: str | None = None
        self.turns_submitted = 0
        self._journal: deque[JournalEvent] = deque(maxlen=journal_max)
        self._next_id = 1
        self._subscribers: set[Subscriber] = set()
        self._keys: OrderedDict[str, float] = OrderedDict()

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def append(self, event: str, data: object | bytes) -> JournalEvent:
        """Journal one event (dict data gets ``emitted_at_ms``) and offer it to every subscriber."""
        entry = encode_journal_event(self._next_id, event, data if isinstance(data, bytes) else stamp(data))
        self._next_id += 1
        self._journal.append(entry)
        for sub in self._subscribers:
            sub.offer(entry)
        return entry

    def after(self, cursor: int) -> list[JournalEvent]:
        """Journaled events with id > ``cursor`` (ids are dense, so the offset is arithmetic)."""
        if not self._journal:
            return []
        start = max(0, cursor - self._journal[0].id + 1)
        return list(itertools.islice(self._journal, start, None))

    def subscribe(self, max_pending: int) -> Subscriber:
        sub = Subscriber(max_pending)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def key_seen(self, key: str, now: float, ttl_s: float) -> bool:
        """True when the idempotency key was used within ``ttl_s`` (expired keys are forgotten)."""
        while self._keys:
            oldest, seen = next(iter(self._keys.items()))
            if now - seen < ttl_s:
                break
            del self._keys[oldest]
        return key in self._keys

    def remember_key(self, key: str, now: float) -> None:
        """Record an idempotency key; the oldest go first beyond MAX_IDEMPOTENCY_KEYS."""
        self._keys[key] = now
        while len(self._keys) > MAX_IDEMPOTENCY_KEYS:
            self._keys.popitem(last=False)
