"""Cluster mode over one shared Redis: the per-conversation upstream lease, journal tailing, fenced sink.

Only the lease holder runs a conversation's upstream and appends (``ClusterSink``, fenced by the
append script); every process with local viewers runs one ``JournalTailer`` per conversation that
feeds its local hub, the holder included, so all processes deliver the same sequence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio

from gateway.backoff import Backoff
from gateway.envelope import Envelope
from gateway.journal.availability import UNAVAILABLE, JournalUnavailable, unavailable_as_error
from gateway.journal.base import Journal, JournalHead
from gateway.journal.keys import conversation_key
from gateway.journal.redis import RedisJournal, decode_entry

log = logging.getLogger("gateway.cluster")

# Beyond a blocking read's own block time: no reply within this means the connection is dead.
READ_GRACE_S = 5.0

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _raise_if_cancelled() -> None:
    # Python 3.11's asyncio.wait_for, which redis-py uses to send under a socket timeout, can swallow a
    # cancellation that races with completion (fixed in 3.12): long-running loops re-check themselves.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Lease:
    """The right to run one conversation's upstream: ``SET key owner NX PX ttl``, renewed by its owner."""

    def __init__(self, redis: redis.asyncio.Redis, prefix: str, conversation_id: str, owner: str, ttl_ms: int) -> None:
        self._redis = redis
        self.key = conversation_key(prefix, conversation_id, "lease")
        self.conversation_id = conversation_id
        self.owner = owner
        self.ttl_ms = ttl_ms
        # When the last successful acquire/renew was *sent*: the lease is ours until this + ttl.
        self.confirmed_at: float | None = None
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (or renew it if we already do)."""
        sent = time.monotonic()
        with unavailable_as_error(f"lease acquire of {self.conversation_id}"):
            taken = await self._redis.set(self.key, self.owner, nx=True, px=self.ttl_ms)
        if taken:
            self.confirmed_at = sent
            return True
        return await self.renew()

    async def renew(self) -> bool:
        """Extend the lease by one TTL; False when it is no longer ours."""
        sent = time.monotonic()
        with unavailable_as_error(f"lease renew of {self.conversation_id}"):
            renewed = await self._renew([self.key], [self.owner, self.ttl_ms])
        if renewed:
            self.confirmed_at = sent
        return bool(renewed)

    async def release(self) -> None:
        """Give the lease up (only if still ours) so another process takes over at once."""
        self.confirmed_at = None
        with unavailable_as_error(f"lease release of {self.conversation_id}"):
            await self._release([self.key], [self.owner])

    async def holder(self) -> str | None:
        """The owner id currently holding the lease, if any."""
        with unavailable_as_error(f"lease lookup of {self.conversation_id}"):
            value = await self._redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value


async def hold_lease(lease: Lease, on_lost: Callable[[], None]) -> None:
    """Renew ``lease`` every ttl/3 until cancelled; call ``on_lost`` once when it is gone or may lapse.

    Failed renewals (Redis unreachable) are retried every ttl/12 while the lease is surely still
    ours; ``on_lost`` comes before the TTL runs out, so the holder stops before anyone can take over.
    """
    ttl = lease.ttl_ms / 1000
    period, retry = ttl / 3, ttl / 12
    delay = period
    while True:
        await asyncio.sleep(delay)
        _raise_if_cancelled()
        confirmed = lease.confirmed_at
        remaining = -1.0 if confirmed is None else confirmed + ttl - time.monotonic()
        held = False
        if remaining > retry:
            try:
                # An answer later than this would come too late to stop in time anyway.
                async with asyncio.timeout(remaining - retry):
                    held = await lease.renew()
                delay = period
            except (JournalUnavailable, TimeoutError) as exc:
                log.warning("lease renew failed conversation=%s, retrying: %s", lease.conversation_id, exc)
                delay = retry
                continue
        _raise_if_cancelled()
        if not held:
            log.warning("lease lost conversation=%s owner=%s", lease.conversation_id, lease.owner)
            lease.confirmed_at = None
            on_lost()
            return


class JournalTailer:
    """The one reader of a conversation's journal stream in this process; feeds ``on_envelopes`` in order.

    Blocking XREAD holds its connection, so the tailer takes a dedicated one from the pool. It
    survives Redis restarts: it reconnects with capped, jittered backoff and resumes after the last
    seq it delivered, so nothing is delivered twice. Entries trimmed meanwhile are a gap it
    reports but cannot fill; it delivers what exists and the hub resumes viewers from the journal.

    Give it a client with ``socket_timeout=None`` (redis-py 8 defaults to 5 s): the tailer bounds
    every read itself, and with a socket timeout redis-py sends under ``asyncio.wait_for``, which on
    Python 3.11 can lose a cancellation (the tailer then stops only after its current block).
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        journal: RedisJournal,
        conversation_id: str,
        on_envelopes: Callable[[list[Envelope]], None],
        start_after: int,
        *,
        block_ms: int = 1000,
        batch: int = 256,
        backoff: Backoff | None = None,
    ) -> None:
        self._redis = redis
        self._journal = journal
        self.conversation_id = conversation_id
        self._on_envelopes = on_envelopes
        self.last_seq = start_after
        # A blocking read longer than the client's socket timeout would look like a dead Redis.
        socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_ms = max(1, min(block_ms, int(socket_timeout * 500))) if socket_timeout else block_ms
        self._batch = batch
        self._backoff = backoff or Backoff(0.1, 5.0)
        self._key = journal.key(conversation_id, "journal")
        self.connected = False
        self.gaps = 0
        self.last_cursor: str | None = None  # HQ's id: of the last delivered upstream event
        # Told when the journal under our position was lost or rolled back: (head now, last seq we
        # delivered, when our reads were interrupted: viewers registered later stand on the new journal).
        self.on_reset: Callable[[JournalHead, int, float | None], None] | None = None
        # Told once per outage when Redis stays unreadable for ``outage_notice_s``.
        self.on_outage: Callable[[], None] | None = None
        self.outage_notice_s = 5.0
        self._down_since: float | None = None
        self._outage_told = False

    async def run(self) -> None:
        """Tail until cancelled."""
        while True:
            try:
                await self._tail()
            except (*UNAVAILABLE, JournalUnavailable, TimeoutError) as exc:
                self.connected = False
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                elif not self._outage_told and now - self._down_since >= self.outage_notice_s:
                    # Viewers are never left connected and fed nothing: tell them, they resume later.
                    self._outage_told = True
                    log.warning("journal of %s unreadable for %.1fs: telling its viewers", self.conversation_id,
                                now - self._down_since)  # fmt: skip
                    if self.on_outage is not None:
                        self.on_outage()
                delay = self._backoff.next_delay()
                if self._down_since is not None and not self._outage_told:
                    delay = min(delay, max(0.05, self._down_since + self.outage_notice_s - now))
                log.warning("journal tail of %s interrupted, retrying in %.2fs: %s", self.conversation_id, delay, exc)
                _raise_if_cancelled()
                await asyncio.sleep(delay)

    async def _tail(self) -> None:
        conn = self._redis.client()
        try:
            await self._check_incarnation()
            while True:
                _raise_if_cancelled()
                async with asyncio.timeout(self._block_ms / 1000 + READ_GRACE_S):
                    reply = await conn.xread({self._key: f"{self.last_seq}-0"}, count=self._batch, block=self._block_ms)
                self.connected = True
                self._down_since, self._outage_told = None, False
                self._backoff.reset()
                self._deliver(reply)
        finally:
            await conn.aclose()

    async def _check_incarnation(self) -> None:
        """After a (re)connect: is the journal still the one we were following?"""
        head = await self._journal.head(self.conversation_id)
        if not self.last_seq:
            return
        lost = not head.exists or head.seq < self.last_seq or head.first > self.last_seq + 1
        if not lost:
            return
        # Redis lost the journal under us (restart without persistence, an older snapshot, a flush):
        # local viewers are told with the bounds that remain, and the tail follows what comes next.
        log.warning(
            "journal of %s lost under delivered seq %d (now first=%d seq=%d): telling viewers",
            self.conversation_id, self.last_seq, head.first, head.seq,
        )  # fmt: skip
        delivered = self.last_seq
        if head.exists and head.seq < self.last_seq:
            self.last_seq = head.first - 1
        if self.on_reset is not None:
            self.on_reset(head, delivered, self._down_since)

    def _deliver(self, reply: Any) -> None:
        # RESP2: [[key, entries]]; RESP3: {key: [entries]}.
        if isinstance(reply, dict):
            streams: Sequence[Any] = [entries for value in reply.values() for entries in value]
        else:
            streams = [stream[1] for stream in reply or ()]
        envelopes = []
        for entries in streams:
            for entry_id, fields in entries:
                env = decode_entry(entry_id, fields)
                if env.seq <= self.last_seq:
                    continue
                envelopes.append(env)
                cursor = fields.get(b"cursor") if isinstance(fields, dict) else None
                if cursor is not None:
                    self.last_cursor = cursor.decode()
        if not envelopes:
            return
        if self.last_seq and envelopes[0].seq != self.last_seq + 1:
            self.gaps += 1
            log.warning(
                "journal tail of %s skipped seqs %d..%d (trimmed or reset)",
                self.conversation_id, self.last_seq + 1, envelopes[0].seq - 1,
            )  # fmt: skip
        self.last_seq = envelopes[-1].seq
        self._on_envelopes(envelopes)


class ClusterSink:
    """Upstream sink of the lease holder: a fenced append only; the tailers publish to viewers."""

    def __init__(self, journal: Journal, owner: str) -> None:
        self._journal = journal
        self.owner = owner

    async def emit(self, conversation_id: str, envelopes: list[Envelope], cursor: str | None) -> None:
        await self._journal.append(conversation_id, envelopes, cursor, owner=self.owner)
