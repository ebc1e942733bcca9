"""In-process fan-out: per-conversation topics, bounded per-viewer queues, journal splice.

A subscriber holds a cursor (the last seq it delivered). Live envelopes land in its bounded queue;
whatever the queue cannot explain (a resume point behind the live edge, a gap) is read from the
journal first, so replay and live never interleave, duplicate or skip (the Mercure splice, done
with seq arithmetic instead of buffering).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from gateway.coalesce import coalesce
from gateway.delivery import FrameCache
from gateway.envelope import Envelope
from gateway.errors import JournalUnavailable
from gateway.journal.base import Journal
from gateway.snapshot import TurnView

log = logging.getLogger("gateway.hub")

REPLAY_BATCH = 256
MAX_VIEWS = 10_000


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a subscriber was cut loose, as every transport tells it.

    ``kind`` "stale" is told as an SSE ``stale`` event (the resume will say what is left), "error" as
    an SSE ``error`` event with ``error`` = ``code``; STOMP says ``code: text; resume with since-seq:N``.
    """

    code: str
    kind: str
    text: str


REASONS: dict[str, Reason] = {
    "slow": Reason("slow", "stale", "slow consumer: cut loose to protect other viewers"),
    "expired": Reason("expired", "stale", "the journal no longer holds what this viewer still needed"),
    "reset": Reason("reset", "stale", "the journal lost its data (Redis restarted empty or rolled back)"),
    "unavailable": Reason("journal_unavailable", "error", "the journal (Redis) is unreachable; reconnect later"),
    "internal": Reason("internal_error", "error", "delivery to this viewer failed"),
    "shutdown": Reason("shutdown", "stale", "server shutting down"),
    "disconnected_by_admin": Reason(
        "disconnected_by_admin", "error", "an operator ended this conversation's viewers; reconnect later"
    ),
}


def reason_of(name: str) -> Reason:
    return REASONS.get(name) or Reason(name, "error", name.replace("_", " "))


@dataclass(frozen=True, slots=True)
class StaleNotice:
    """A resume point the journal cannot honour exactly: the replay starts at ``oldest``."""

    requested: int
    oldest: int
    newest: int
    reason: str  # "expired" | "ahead"

    def as_dict(self) -> dict[str, int | str]:
        return {
            "requested": self.requested,
            "oldest": self.oldest,
            "newest": self.newest,
            "reason": self.reason,
        }


class SubscriberStale(Exception):
    """The subscriber was cut loose; ``reason`` says why (a key of ``REASONS``), ``cursor`` where to resume."""

    def __init__(self, reason: str, cursor: int, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cursor = cursor
        self.detail = detail or {}

    def sse_data(self) -> tuple[str, dict[str, Any]]:
        """The SSE event name and data that tell the viewer."""
        why = reason_of(self.reason)
        if why.kind == "stale":
            return "stale", {"reason": self.reason, "resumeFrom": self.cursor, **self.detail}
        return "error", {"error": why.code, "message": why.text, "resumeFrom": self.cursor, **self.detail}

    def stomp_message(self) -> str:
        """The STOMP ERROR ``message`` header that tells the viewer."""
        why = reason_of(self.reason)
        if self.reason == "slow":
            return f"slow consumer: cut loose to protect other viewers; resume with since-seq:{self.cursor}"
        return f"{why.code}: {why.text}; resume with since-seq:{self.cursor}"


class Subscriber:
    """One viewer subscription: a cursor, a bounded queue and a wake-up.

    Memory is per viewer, so an idle one holds no queue, no event and (when parked) no task.
    """

    __slots__ = (
        "_bytes",
        "_coalesce_at",
        "_idle",
        "_journal",
        "_max_bytes",
        "_max_messages",
        "_on_wake",
        "_queue",
        "_waiter",
        "catch_up_to",
        "coalesce_after",
        "conversation_id",
        "cursor",
        "detail",
        "direct",
        "direct_batch",
        "failure",
        "on_fail",
        "registered_at",
    )

    def __init__(
        self, journal: Journal, conversation_id: str, cursor: int, catch_up_to: int, max_messages: int,
        max_bytes: int,
    ) -> None:  # fmt: skip
        self._journal = journal
        self.conversation_id = conversation_id
        self.registered_at = time.monotonic()  # which journal incarnation it stands on, after a loss
        self.cursor = cursor
        self.catch_up_to = catch_up_to
        self._queue: deque[Envelope] | None = None  # created when an envelope must wait
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._waiter: asyncio.Future[None] | None = None  # next_batch waiting
        self._on_wake: Callable[[], None] | None = None  # parked: call once when there is work
        self.failure: str | None = None
        self.detail: dict[str, Any] | None = None  # what the viewer is told with the failure (bounds)
        self.coalesce_after = 0  # queue length past which deltas are merged (0: never)
        # Called once when the subscriber is cut loose: a transport blocked writing to a peer that
        # stopped reading never calls next_batch again, so it must be interrupted from here.
        self.on_fail: Callable[[str], None] | None = None
        # Fan-out fast path: when the transport idles, caught up, with nothing queued, an envelope
        # is written synchronously from publish (no queue, no task wake-up); False falls back.
        self.direct: Callable[[Envelope], bool] | None = None
        # The same for several consecutive envelopes at once (one write for a burst).
        self.direct_batch: Callable[[list[Envelope]], bool] | None = None
        self._coalesce_at = 0
        self._idle = False  # the transport waits for envelopes: a burst is no sign of lag

    @property
    def queued(self) -> int:
        return len(self._queue or ())

    def offer(self, env: Envelope) -> None:
        """Queue a live envelope; never blocks. Overflow cuts the subscriber loose."""
        if self.failure is not None:
            return
        queue = self._queue
        if (
            self._idle
            and self.direct is not None
            and not queue
            and env.first_seq == self.cursor + 1
            and self.cursor >= self.catch_up_to
            and self.direct(env)
        ):
            self.cursor = env.seq
            return
        if queue is None:
            queue = self._queue = deque()
        queue.append(env)
        self._bytes += len(env.body)
        if self.coalesce_after and not self._idle and len(queue) > max(self.coalesce_after, self._coalesce_at):
            self._compact(queue)
        if len(queue) > self._max_messages or self._bytes > self._max_bytes:
            self.fail("slow")
            return
        self._wakeup()

    def offer_batch(self, envs: list[Envelope]) -> None:
        """``offer`` for consecutive envelopes: one direct write for all when the fast path is open."""
        if self.failure is not None:
            return
        if (
            self._idle
            and self.direct_batch is not None
            and not self._queue
            and envs[0].first_seq == self.cursor + 1
            and self.cursor >= self.catch_up_to
            and all(b.first_seq == a.seq + 1 for a, b in pairwise(envs))
            and self.direct_batch(envs)
        ):
            self.cursor = envs[-1].seq
            return
        for env in envs:
            self.offer(env)

    def park(self, on_wake: Callable[[], None]) -> bool:
        """Idle with no task waiting: True when caught up with nothing queued and a direct path set.

        Envelopes then go out through ``direct``; the first that cannot (or a failure) calls
        ``on_wake`` once, which should start a task that calls ``next_batch`` again.
        """
        if self.failure is not None or self._queue or self.direct is None or self.cursor < self.catch_up_to:
            return False
        self._queue = None
        self._idle = True
        self._on_wake = on_wake
        return True

    def _wakeup(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            return
        on_wake = self._on_wake
        if on_wake is not None:
            self._on_wake = None
            self._idle = False
            on_wake()

    def _compact(self, queue: deque[Envelope]) -> None:
        """Merge queued deltas instead of cutting a lagging viewer loose (AI-stream-aware fan-out)."""
        while queue and queue[0].seq <= self.cursor:
            queue.popleft()
        merged = coalesce(queue)
        self._queue = deque(merged)
        self._bytes = sum(len(e.body) for e in merged)
        # Amortized O(1) per envelope: the next pass waits until the queue has doubled.
        self._coalesce_at = 2 * len(merged)

    def fail(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        if self.failure is not None:
            return
        self.failure = reason
        self.detail = detail
        self._queue = None
        self._bytes = 0
        self._wakeup()
        if self.on_fail is not None:
            self.on_fail(reason)

    async def next_batch(self, timeout: float | None = None, limit: int = REPLAY_BATCH) -> list[Envelope]:
        """The next envelopes after ``cursor``, in order; [] when ``timeout`` passes first."""
        self._on_wake = None  # a task is here: no longer parked
        self._idle = False
        while True:
            if self.failure is not None:
                raise SubscriberStale(self.failure, self.cursor, self.detail)
            target = self.catch_up_to
            queue = self._queue
            if queue:
                while queue and queue[0].seq <= self.cursor:
                    self._bytes -= len(queue.popleft().body)
                if queue:
                    target = max(target, queue[0].first_seq - 1)
            if self.cursor < target:
                live_from = queue[0].first_seq if queue else None
                return await self._from_journal(min(limit, target - self.cursor), live_from)
            if queue:
                batch: list[Envelope] = []
                while queue and len(batch) < limit and queue[0].first_seq == self.cursor + 1:
                    env = queue.popleft()
                    self._bytes -= len(env.body)
                    batch.append(env)
                    self.cursor = env.seq
                return batch
            self._queue = None  # drained: an idle viewer keeps no queue
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            self._idle = True
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                return []
            finally:
                self._idle = False
                self._waiter = None

    async def _from_journal(self, count: int, live_from: int | None = None) -> list[Envelope]:
        try:
            envs = await self._journal.read(self.conversation_id, self.cursor, count)
        except JournalUnavailable as exc:
            # Never connected and fed nothing: the viewer is told, and resumes once Redis answers.
            log.warning("journal read for a viewer of %s failed: %s", self.conversation_id, exc)
            self.fail("unavailable")
            raise SubscriberStale("unavailable", self.cursor) from exc
        # Cursor 0 ("before everything") takes whatever the journal starts with, unless it starts after
        # an envelope this viewer was already offered live: then that envelope was lost under it
        # (Redis lost its data, a new incarnation began) and the viewer must hear so.
        lost_from_start = self.cursor == 0 and live_from is not None and envs and envs[0].seq > live_from
        if not envs or (envs[0].seq != self.cursor + 1 and self.cursor != 0) or lost_from_start:
            # Retention trimmed what this viewer still needed while it was catching up.
            self.fail("expired")
            raise SubscriberStale("expired", self.cursor)
        self.cursor = envs[-1].seq
        return envs


class Hub:
    """Local fan-out of journaled envelopes to the subscribers of each conversation."""

    def __init__(self, journal: Journal, max_messages: int, max_bytes: int, replay_max: int) -> None:
        self._journal = journal
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._replay_max = replay_max
        self._topics: dict[str, set[Subscriber]] = {}
        self._views: dict[str, TurnView] = {}
        # Per conversation with viewers here: each render group's encoded frames (gateway/delivery.py).
        self._frames: dict[str, dict[Hashable, FrameCache[Any]]] = {}
        self.coalesce_after = 0

    def frames(self, conversation_id: str, group: Hashable) -> FrameCache[Any]:
        """The frame cache of one render group (format, scope[, render key]) of a conversation.

        Kept while the conversation has subscribers here (one without any gets a private cache)."""
        groups = self._frames.get(conversation_id)
        if groups is None:
            if conversation_id not in self._topics:
                return FrameCache()
            groups = self._frames[conversation_id] = {}
        cache = groups.get(group)
        if cache is None:
            cache = groups[group] = FrameCache()
        return cache

    async def snapshot(self, conversation_id: str, now_ms: int) -> Envelope:
        """The TURN_SNAPSHOT of the conversation: O(1) once its view exists, built from the journal once."""
        view = self._views.pop(conversation_id, None)
        if view is None:
            view = TurnView(conversation_id)
            head = await self._journal.head(conversation_id)
            view.last_seq = max(0, head.oldest - 1) if head.exists else 0
        self._views[conversation_id] = view  # most recently used last
        while len(self._views) > MAX_VIEWS:
            del self._views[next(iter(self._views))]
        while True:  # catch up with whatever was journaled but not published here
            envs = await self._journal.read(conversation_id, view.last_seq, REPLAY_BATCH)
            for env in envs:
                if env.first_seq == view.last_seq + 1 or view.last_seq == 0:
                    view.apply(env)
            if len(envs) < REPLAY_BATCH:
                return view.envelope(now_ms)

    async def subscribe(
        self, conversation_id: str, since: int | None, *, coalesce: bool = True
    ) -> tuple[Subscriber, StaleNotice | None]:
        """Attach a subscriber; with ``since`` it first replays everything after it."""
        sub = Subscriber(self._journal, conversation_id, 0, 0, self._max_messages, self._max_bytes)
        if coalesce:
            sub.coalesce_after = self.coalesce_after
        # Register before reading the head: anything published meanwhile is queued, not lost.
        self._topics.setdefault(conversation_id, set()).add(sub)
        try:
            head = await self._journal.head(conversation_id)
        except BaseException:
            self.unsubscribe(sub)
            raise
        sub.catch_up_to = head.seq
        if since is None:
            sub.cursor = head.seq
            return sub, None
        # 0 means "before everything": a journal incarnation starts wherever its first seq is.
        oldest = max(head.oldest, head.seq - self._replay_max + 1)
        notice = None
        if since > head.seq:
            notice = StaleNotice(since, oldest, head.seq, "ahead")
        elif since < oldest - 1 and (since != 0 or oldest > head.first):
            notice = StaleNotice(since, oldest, head.seq, "expired")
        sub.cursor = since if notice is None and since >= oldest - 1 else max(0, oldest - 1)
        if not head.exists:
            sub.cursor = 0
        return sub, notice

    async def subscribe_with_snapshot(
        self, conversation_id: str, now_ms: int, *, coalesce: bool = True
    ) -> tuple[Subscriber, Envelope]:
        """Attach a cursorless subscriber that starts with the turn snapshot, then live after it."""
        sub, _ = await self.subscribe(conversation_id, None, coalesce=coalesce)
        try:
            snap = await self.snapshot(conversation_id, now_ms)
        except BaseException:
            self.unsubscribe(sub)
            raise
        sub.cursor = sub.catch_up_to = snap.seq
        return sub, snap

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._topics.get(sub.conversation_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._topics[sub.conversation_id]
                self._frames.pop(sub.conversation_id, None)  # nobody left to render for

    def publish(self, conversation_id: str, envelopes: Iterable[Envelope]) -> None:
        view = self._views.get(conversation_id)
        subs = self._topics.get(conversation_id)
        batch = envelopes if isinstance(envelopes, list) else list(envelopes)
        for env in batch:
            if view is not None and env.first_seq == view.last_seq + 1:
                view.apply(env)
        if not subs or not batch:
            return
        # Each viewer isolated (like websockets.broadcast()): one failing write is told and closed,
        # the others and the conversation carry on.
        if len(batch) == 1:
            env = batch[0]
            for sub in subs:
                try:
                    sub.offer(env)
                except Exception:
                    self._isolate(sub)
        else:  # viewer by viewer: each gets the whole burst in one write when it can
            for sub in subs:
                try:
                    sub.offer_batch(batch)
                except Exception:
                    self._isolate(sub)

    @staticmethod
    def _isolate(sub: Subscriber) -> None:
        log.exception("delivery to a viewer of %s failed; cutting it loose", sub.conversation_id)
        try:
            sub.fail("internal")
        except Exception:
            log.exception("telling a failed viewer of %s failed", sub.conversation_id)

    def fail_conversation(
        self, conversation_id: str, reason: str, detail: dict[str, Any] | None = None,
        affected: Callable[[Subscriber], bool] | None = None,
    ) -> int:  # fmt: skip
        """Cut the local subscribers of a conversation (those ``affected``) loose with ``reason``; how many."""
        subs = [s for s in self._topics.get(conversation_id, ()) if affected is None or affected(s)]
        for sub in subs:
            try:
                sub.fail(reason, detail)
            except Exception:
                log.exception("telling a viewer of %s failed", conversation_id)
        return len(subs)

    def forget(self, conversation_id: str) -> None:
        """Drop the conversation's turn view (its journal was retired); a later snapshot rebuilds it."""
        self._views.pop(conversation_id, None)

    def viewers(self, conversation_id: str) -> int:
        return len(self._topics.get(conversation_id, ()))

    def close_all(self, reason: str = "shutdown") -> None:
        for subs in self._topics.values():
            for sub in subs:
                sub.fail(reason)
