"""Cluster mode for one conversation in one process: tail the journal, contend for the upstream lease.

Every process with local interest tails the conversation's Redis journal into its hub. At most one
of them (the lease holder) runs the HQ upstream and appends, fenced by the lease in the same atomic
step. When the holder dies its lease lapses and a contender takes over within about one TTL,
resuming HQ from the cursor stored with the last append: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import redis.asyncio
import redis.exceptions

from gateway.backoff import Backoff
from gateway.cluster import ClusterSink, JournalTailer, Lease, hold_lease
from gateway.envelope import Envelope, HqEvent, Mapping, TurnState, normalize
from gateway.errors import JournalConflict
from gateway.hub import Hub, Subscriber
from gateway.journal.availability import JournalUnavailable
from gateway.journal.base import JournalHead
from gateway.journal.keys import conversation_key
from gateway.journal.redis import RedisJournal
from gateway.upstream.supervisor import ConversationUpstream, Sink, UpstreamState

log = logging.getLogger("gateway.cluster")

ORIGINATE_ATTEMPTS = 20
ORIGINATE_BACKOFF_S = 0.01
TURN_END_STAGES = (b"ASSISTANT_OUTPUT", b"ENGINE_RETURN")


class ClusteredConversation:
    """The same face as ConversationUpstream for the registry and REST, backed by Redis."""

    def __init__(
        self,
        conversation_id: str,
        *,
        redis_client: redis.asyncio.Redis,
        tail_client: redis.asyncio.Redis,
        journal: RedisJournal,
        hub: Hub,
        mapping: Mapping,
        owner: str,
        lease_ttl_ms: int,
        make_upstream: Callable[[Sink], ConversationUpstream],
        outage_notice_s: float = 5.0,
        on_data_loss: Callable[[str], None] | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self._journal = journal
        self._hub = hub
        self._mapping = mapping
        self._make_upstream = make_upstream
        self._tail_client = tail_client
        self.lease = Lease(redis_client, journal.prefix, conversation_id, owner, lease_ttl_ms)
        self._redis = redis_client
        self._live_key = conversation_key(journal.prefix, conversation_id, "live")  # the holder's stream is up
        self.state = UpstreamState.CONNECTING
        self.connected = asyncio.Event()  # some process in the cluster streams this conversation
        self.turn_ended = asyncio.Event()
        self.ended_at: float | None = None
        self.leader: ConversationUpstream | None = None
        self.takeovers = 0
        self._outage_notice_s = outage_notice_s
        self._on_data_loss = on_data_loss
        self._tailer: JournalTailer | None = None
        self._led: tuple[int, str | None] | None = None  # (seq, cursor) where this process's last lead stopped

    @property
    def is_leader(self) -> bool:
        return self.leader is not None

    async def run(self) -> None:
        head = await self._retrying(lambda: self._journal.head(self.conversation_id))
        tailer = JournalTailer(self._tail_client, self._journal, self.conversation_id, self._publish, head.seq)
        tailer.outage_notice_s = self._outage_notice_s
        tailer.on_outage = self._tell_outage
        tailer.on_reset = self._tell_reset
        self._tailer = tailer
        tail_task = asyncio.create_task(tailer.run(), name=f"tail:{self.conversation_id}")
        try:
            await self._contend()
        finally:
            tail_task.cancel()
            with suppress(asyncio.CancelledError):
                await tail_task

    def _tell_outage(self) -> None:
        told = self._hub.fail_conversation(self.conversation_id, "unavailable")
        log.warning("journal of %s unreachable: %d local viewers told to resume later", self.conversation_id, told)

    def _tell_reset(self, head: JournalHead, delivered: int, interrupted_at: float | None) -> None:
        bounds = {"oldest": head.oldest, "newest": head.seq} if head.exists and not head.empty else {}

        def on_lost_incarnation(sub: Subscriber) -> bool:
            # Viewers that joined after the loss already stand on what Redis holds now; one that joined
            # before it stands on the lost journal even with cursor 0 (it may not have read it yet).
            if head.exists and head.first - 1 <= sub.cursor <= head.seq:
                return False
            return interrupted_at is None or sub.registered_at < interrupted_at

        told = self._hub.fail_conversation(self.conversation_id, "reset", bounds, on_lost_incarnation)
        detail = f"journal of {self.conversation_id} lost under seq {delivered}"
        log.warning("%s: %d local viewers told to resume", detail, told)
        if self._on_data_loss is not None:
            self._on_data_loss(detail)

    def _publish(self, envelopes: list[Envelope]) -> None:
        self._hub.publish(self.conversation_id, envelopes)
        for env in envelopes:
            if env.stage.encode() in TURN_END_STAGES or (env.stage == "VERBOSE" and b'"VERBOSE_ERROR"' in env.body):
                self.turn_ended.set()

    async def _contend(self) -> None:
        ttl_s = self.lease.ttl_ms / 1000
        backoff = Backoff(0.05, ttl_s)
        while True:
            try:
                acquired = await self.lease.acquire()
            except JournalUnavailable as exc:
                self.connected.clear()
                delay = backoff.next_delay()
                log.warning("lease of %s unavailable, retrying in %.2fs: %s", self.conversation_id, delay, exc)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not acquired:
                # Someone else streams it; poll often enough that takeover lands within ~1 TTL.
                self.connected.set()
                self.state = UpstreamState.LIVE
                await asyncio.sleep(ttl_s / 10)
                continue
            refused = await self._lead()
            if refused:
                return

    async def _lead(self) -> bool:
        """Run the upstream while holding the lease; True when HQ refused the conversation for good."""
        log.info("lease acquired conversation=%s owner=%s", self.conversation_id, self.lease.owner)
        self.takeovers += 1
        upstream = self._make_upstream(ClusterSink(self._journal, self.lease.owner))
        upstream.resume_hint = await self._resume_hint()
        self.leader = upstream
        lost = asyncio.Event()
        keeper = asyncio.create_task(hold_lease(self.lease, lost.set), name=f"lease:{self.conversation_id}")
        runner = asyncio.create_task(upstream.run(), name=f"lead:{self.conversation_id}")
        mirror = asyncio.create_task(self._mirror(upstream), name=f"mirror:{self.conversation_id}")
        lost_wait = asyncio.create_task(lost.wait())
        try:
            await asyncio.wait({runner, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (keeper, runner, mirror, lost_wait):
                task.cancel()
            for task in (keeper, runner, mirror, lost_wait):
                with suppress(asyncio.CancelledError, Exception):
                    await task
            self.leader = None
            self.connected.clear()
            if upstream.seq:
                self._led = (upstream.seq, upstream.cursor)
            if not lost.is_set():
                # Also on shutdown (cancellation): a released lease lets another replica take over now
                # instead of after the TTL.
                with suppress(JournalUnavailable, TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(1):
                        await self.lease.release()
        refused = runner.done() and not runner.cancelled() and upstream.state is UpstreamState.FAILED
        if refused:
            self.state = UpstreamState.FAILED
        elif runner.done() and not runner.cancelled() and runner.exception() is not None:
            log.warning("upstream of %s stopped: %r", self.conversation_id, runner.exception())
        return refused

    async def _resume_hint(self) -> tuple[int, str | None] | None:
        """The highest seq this process knows was assigned, and its HQ cursor when this process led.

        When Redis lost the journal or rolled it back below that seq, the rolled-back incarnation is
        dropped (fenced by our lease) and the upstream starts a new one above it: a seq that viewers
        saw is never handed out again with another envelope.
        """
        seen = self._tailer.last_seq if self._tailer is not None else 0
        led_seq, led_cursor = self._led or (0, None)
        known = max(seen, led_seq)
        if not known:
            return None
        try:
            head = await self._journal.head(self.conversation_id)
            rolled_back = head.exists and head.seq < known
            if rolled_back:
                await self._journal.discard(self.conversation_id, self.lease.owner)
        except JournalUnavailable:
            return None  # the upstream's own first read fails the same way, and the next lead asks again
        if rolled_back:
            log.warning("journal of %s rolled back from %d to %d: starting a new incarnation",
                        self.conversation_id, known, head.seq)  # fmt: skip
            if self._on_data_loss is not None:
                self._on_data_loss(f"journal of {self.conversation_id} rolled back from {known} to {head.seq}")
        elif head.exists:
            return None  # intact: resume from what Redis holds
        # Our own lead's cursor is exact; as a follower, the cursor carried by the last entry we tailed.
        if led_seq == known:
            return known, led_cursor
        tailed = self._tailer.last_cursor if self._tailer is not None else None
        return known, tailed or head.cursor

    async def _mirror(self, upstream: ConversationUpstream) -> None:
        """Follow the leader's stream here, and for the other processes in the ``live`` key (one TTL at a time)."""
        ttl_ms = self.lease.ttl_ms
        try:
            while True:
                await upstream.connected.wait()
                self.connected.set()
                self.state = UpstreamState.LIVE
                while upstream.connected.is_set():
                    with suppress(redis.exceptions.RedisError, OSError):
                        await self._redis.set(self._live_key, self.lease.owner, px=ttl_ms)
                    await asyncio.sleep(ttl_ms / 3000)
                self.connected.clear()
                await self._not_live()
        finally:  # leadership ends (lease lost, shutdown): nobody's stream is up until the next leader's is
            await self._not_live()

    async def _not_live(self) -> None:
        with suppress(redis.exceptions.RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1):
                await self._redis.delete(self._live_key)

    async def holder_live(self) -> bool:
        """Whether the process leading this conversation has its HQ stream up right now (a submit's 202 needs it)."""
        leader = self.leader
        if leader is not None:
            return leader.connected.is_set()
        try:
            return bool(await self._redis.exists(self._live_key))
        except (redis.exceptions.RedisError, OSError):
            return False

    async def originate(self, name: str, data: dict[str, Any]) -> None:
        """Journal a gateway envelope from any process: compare-and-append on the dense seq."""
        leader = self.leader
        if leader is not None:
            await leader.originate(name, data)
            return
        for attempt in range(ORIGINATE_ATTEMPTS):
            if attempt:
                # The holder appended in between (a turn streams ~25 events/s): step aside a moment.
                await asyncio.sleep(random.uniform(0, ORIGINATE_BACKOFF_S * attempt))
            head, last = await self._journal.head_and_last(self.conversation_id)
            turn = TurnState()
            if last is not None and last.seq == head.seq:
                turn = TurnState.from_meta(last.as_dict()["payload"].get("_meta", {}))
            seq = head.seq + 1 if head.exists else int(time.time() * 1000) + 1
            env, _ = normalize(HqEvent(name, data), seq=seq, conversation_id=self.conversation_id, turn=turn,
                               mapping=self._mapping, now_ms=int(time.time() * 1000))  # fmt: skip
            if env is None:
                return
            try:
                # The holder's next append then fails its seq check, reloads the head and carries on.
                await self._journal.append(self.conversation_id, [env], None)
                return
            except JournalConflict:
                continue
        raise JournalConflict(f"{self.conversation_id}: could not append {name} after {ORIGINATE_ATTEMPTS} tries")

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        backoff = Backoff(0.05, 2.0)
        while True:
            try:
                return await call()
            except JournalUnavailable:
                await asyncio.sleep(backoff.next_delay())
