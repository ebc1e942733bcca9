"""One upstream task per active conversation: resume, reconnect, normalize, journal, publish."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from gateway.backoff import Backoff
from gateway.envelope import ConversationInfo, Envelope, HqEvent, Mapping, TurnState, normalize
from gateway.errors import JournalConflict, JournalRollback, UpstreamFatal
from gateway.journal.base import Journal
from gateway.metrics import Metrics
from gateway.upstream.client import HqClient, RetryHint, UpstreamUnavailable

log = logging.getLogger("gateway.upstream")

RECENT_IDS = 1024
APPEND_ATTEMPTS = 3
KNOWN_EVENTS = frozenset(
    ("status", "agent_active", "tool_call", "tool_result", "text_delta", "token_usage", "final", "error", "done")
)


def _reason_label(reason: str) -> str:
    """A bounded label for a reconnect reason."""
    text = reason.lower()
    for label in ("stale", "stream ended", "no bytes", "answered 5", "connect", "read", "remote"):
        if label in text:
            return label.replace(" ", "_")
    return "other"


def _raise_if_cancelled() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Sink(Protocol):
    """Where normalized envelopes go: journal first (with the cursor), then viewers."""

    async def emit(self, conversation_id: str, envelopes: list[Envelope], cursor: str | None) -> None: ...


class UpstreamState(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


class ConversationUpstream:
    """The upstream of one conversation: runs until cancelled or HQ refuses it for good."""

    def __init__(
        self,
        conversation_id: str,
        *,
        hq: HqClient,
        journal: Journal,
        sink: Sink,
        mapping: Mapping,
        backoff: Backoff,
        metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.conversation_id = conversation_id
        self._hq = hq
        self._journal = journal
        self._sink = sink
        self._mapping = mapping
        self._backoff = backoff
        self._metrics = metrics or Metrics()
        self._clock_ms = clock_ms
        self.state = UpstreamState.CONNECTING
        self.connected = asyncio.Event()
        self.turn_ended = asyncio.Event()
        self.reconnects = 0
        self.ended_at: float | None = None
        self.seq = 0
        self.cursor: str | None = None
        self.turn = TurnState()
        self.info = ConversationInfo()
        self._recent: deque[str] = deque(maxlen=RECENT_IDS)
        self._recent_set: set[str] = set()
        self._last_numeric = -1
        self._append_lock = asyncio.Lock()  # the run loop and REST submissions both append
        # Cluster mode: (seq, cursor) this process last knew, for when Redis lost the journal under it.
        self.resume_hint: tuple[int, str | None] | None = None
        # Health for the admin API (epoch seconds / ms): set per upstream event or state change, never per delivery.
        self.last_event_at: float | None = None
        self.connected_since: float | None = None
        self.turn_started_ms: int | None = None
        self.ttft_ms: int | None = None  # time to first token of the current (or last) turn
        self._timed_turn = -1

    async def run(self) -> None:
        await self._load()
        await self._fetch_info()
        down_since: float | None = None
        while True:
            self.state = UpstreamState.CONNECTING
            try:
                async with self._hq.open_stream(self.conversation_id, self.cursor) as events:
                    self.state = UpstreamState.LIVE
                    self.connected_since = time.time()
                    self.connected.set()
                    self._metrics.upstream_connects.inc()
                    self._metrics.upstream_connected.inc()
                    self._backoff.reset()
                    log.info("upstream live conversation=%s cursor=%s", self.conversation_id, self.cursor)
                    if down_since is not None:
                        down_for = time.monotonic() - down_since
                        down_since = None
                        await self.originate("gateway.upstream_restored", {
                            "message": f"upstream restored after {down_for:.1f}s", "recoverable": True})  # fmt: skip
                    reason = "stream ended"
                    async for item in events:
                        if isinstance(item, RetryHint):
                            self._backoff.floor_s = min(item.delay_s, self._backoff.max_s * 4)
                        elif item.name == "stale":
                            log.info("upstream says stale conversation=%s: reconnecting", self.conversation_id)
                            reason = "stale"
                            break
                        else:
                            await self._accept(item)
                            # redis-py sends under asyncio.wait_for, which on Python 3.11 can swallow a
                            # cancel: an upstream told to stop must not go on streaming HQ regardless.
                            _raise_if_cancelled()
            except UpstreamFatal as exc:
                self._disconnected()
                self.state = UpstreamState.FAILED
                log.warning("upstream refused conversation=%s: %s", self.conversation_id, exc)
                await self.originate("gateway.upstream_error", {
                    "message": str(exc), "status": exc.status, "recoverable": False})  # fmt: skip
                return
            except UpstreamUnavailable as exc:
                reason = str(exc)
                if down_since is None:
                    down_since = time.monotonic()
                    await self.originate("gateway.upstream_error", {
                        "message": f"upstream unavailable: {reason}", "recoverable": True})  # fmt: skip
            except BaseException:  # cancelled (linger, shutdown, lost lease) or crashed: not connected any more
                self._disconnected()
                raise
            self._disconnected()
            self.state = UpstreamState.BACKOFF
            self.reconnects += 1
            self._metrics.upstream_reconnects.labels(_reason_label(reason)).inc()
            delay = self._backoff.next_delay()
            log.info("upstream reconnect conversation=%s in %.2fs: %s", self.conversation_id, delay, reason)
            _raise_if_cancelled()
            await asyncio.sleep(delay)

    def _disconnected(self) -> None:
        self.connected_since = None
        if self.connected.is_set():
            self.connected.clear()
            self._metrics.upstream_connected.dec()

    async def _load(self) -> None:
        head = await self._journal.head(self.conversation_id)
        # A new journal incarnation starts at the wall clock in ms (see JournalHead).
        self.seq, self.cursor = head.seq or self._clock_ms(), head.cursor
        hint = self.resume_hint
        if hint is not None and not head.exists:
            # The journal is gone (Redis lost its data, or retention expired it): a new incarnation
            # above every seq this process saw, resuming HQ where this process got to, not from scratch.
            self.seq = max(self.seq, hint[0])
            self.cursor = hint[1] if hint[1] is not None else self.cursor
        if self.cursor is not None:
            self._remember(self.cursor)
        if not head.empty:
            last = await self._journal.read(self.conversation_id, head.seq - 1, 1)
            if last:
                self.turn = TurnState.from_meta(last[0].as_dict()["payload"].get("_meta", {}))
                if self.turn.turn != self._timed_turn:  # e.g. a USER_INPUT another process appended
                    # Timed only from its USER_INPUT: a turn taken over midway has no knowable start here.
                    started = last[0].created_ms if last[0].stage == "USER_INPUT" else None
                    self._timed_turn, self.turn_started_ms, self.ttft_ms = self.turn.turn, started, None

    async def _fetch_info(self) -> None:
        try:
            reply = await self._hq.get_conversation(self.conversation_id)
        except UpstreamUnavailable:
            return
        if reply.status == 200 and isinstance(reply.body, dict):
            agent = reply.body.get("agent")
            slug = agent.get("slug") if isinstance(agent, dict) else None
            self.info = ConversationInfo(agent=slug, title=reply.body.get("title"))

    def _is_duplicate(self, event_id: str | None) -> bool:
        if event_id is None:
            return False
        if event_id in self._recent_set:
            return True
        # HQ ids are opaque but increasing; when they are integers, order settles it.
        return event_id.isdigit() and int(event_id) <= self._last_numeric

    def _remember(self, event_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(event_id)
        self._recent_set.add(event_id)
        if event_id.isdigit():
            self._last_numeric = max(self._last_numeric, int(event_id))

    async def _accept(self, event: HqEvent) -> None:
        self._metrics.events_in.labels(event.name if event.name in KNOWN_EVENTS else "other").inc()
        self.last_event_at = time.time()
        if self._is_duplicate(event.id):
            return
        if event.id is not None:
            self._remember(event.id)
            self.cursor = event.id
        await self._append(event, self.cursor)
        if event.name in ("final", "error", "done"):
            self.turn_ended.set()

    async def originate(self, name: str, data: dict[str, Any]) -> None:
        """Journal an envelope the gateway itself produces (user input, upstream errors)."""
        await self._append(HqEvent(name, data, None), None)

    async def _append(self, event: HqEvent, cursor: str | None) -> None:
        async with self._append_lock:
            await self._append_locked(event, cursor)

    async def _append_locked(self, event: HqEvent, cursor: str | None) -> None:
        for attempt in range(APPEND_ATTEMPTS):
            env, turn = normalize(
                event,
                seq=self.seq + 1,
                conversation_id=self.conversation_id,
                turn=self.turn,
                mapping=self._mapping,
                now_ms=self._clock_ms(),
                info=self.info,
            )
            if env is None:
                return
            try:
                await self._sink.emit(self.conversation_id, [env], cursor)
            except JournalConflict:
                # Another process appended (a USER_INPUT in cluster mode): re-read the head and
                # renumber. A lost lease conflicts again and ends this upstream.
                if attempt == APPEND_ATTEMPTS - 1:
                    raise
                keep_cursor, assigned = self.cursor, self.seq
                await self._load()
                if self.seq < assigned:
                    raise JournalRollback(
                        f"{self.conversation_id}: journal head went back from {assigned} to {self.seq}"
                    ) from None
                self.cursor = keep_cursor
                continue
            self.seq, self.turn = env.seq, turn
            self._time_turn(event.name, env.created_ms)
            return

    def _time_turn(self, name: str, created_ms: int) -> None:
        """Time to first token: from the turn's first envelope (its USER_INPUT) to its first reply text."""
        if self.turn.turn != self._timed_turn:
            self._timed_turn, self.turn_started_ms, self.ttft_ms = self.turn.turn, created_ms, None
        if self.ttft_ms is None and self.turn_started_ms is not None and name in ("text_delta", "final"):
            self.ttft_ms = max(0, created_ms - self.turn_started_ms)
