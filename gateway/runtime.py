"""The gateway's running parts, wired once: journal → hub, HQ client, upstream registry."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import redis.asyncio
import redis.exceptions

from gateway.backoff import Backoff
from gateway.bridge.redis_store import RedisCursorStore, RedisPinStore
from gateway.bridge.relay import Bridge
from gateway.config import Settings
from gateway.envelope import Envelope, load_mapping
from gateway.hub import Hub
from gateway.journal.base import Journal
from gateway.journal.batched import BatchedReads
from gateway.journal.memory import MemoryJournal
from gateway.journal.redis import RedisJournal
from gateway.limits import TokenBuckets
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.presence_redis import RedisPresence
from gateway.upstream.client import HqClient
from gateway.upstream.clustered import ClusteredConversation
from gateway.upstream.registry import Activation, UpstreamRegistry
from gateway.upstream.supervisor import ConversationUpstream, Sink

log = logging.getLogger("gateway")

SUBMISSION_KEYS = 100_000
DATA_LOSS_NOTICE_S = 30.0


class LocalSink:
    """Single-process delivery: journal the envelope with its cursor, then fan it out.

    The fan-out runs once the current loop iteration is over, with every envelope the conversation
    journaled meanwhile: a burst read in one chunk from HQ (a turn's final, usage and done) reaches
    each viewer as one write instead of one per envelope.
    """

    def __init__(self, journal: Journal, hub: Hub, metrics: Metrics) -> None:
        self._journal = journal
        self._hub = hub
        self._metrics = metrics
        self._pending: dict[str, list[Envelope]] = {}

    async def emit(self, conversation_id: str, envelopes: list[Envelope], cursor: str | None) -> None:
        await self._journal.append(conversation_id, envelopes, cursor)
        for env in envelopes:
            self._metrics.envelopes.labels("VERBOSE" if env.stage == "VERBOSE" else "AUDIT").inc()
        pending = self._pending.get(conversation_id)
        if pending is not None:
            pending.extend(envelopes)
        elif envelopes:
            self._pending[conversation_id] = list(envelopes)
            asyncio.get_running_loop().call_soon(self._publish, conversation_id)

    def _publish(self, conversation_id: str) -> None:
        envelopes = self._pending.pop(conversation_id, None)
        if envelopes:
            self._hub.publish(conversation_id, envelopes)


class Gateway:
    """Everything one gateway process runs; built from Settings, started and stopped by the app."""

    def __init__(self, settings: Settings, journal: Journal | None = None) -> None:
        self.settings = settings
        self.instance_id = uuid.uuid4().hex[:12]
        self.metrics = Metrics()
        self.started_at = time.time()
        self.mapping = load_mapping(settings.mapping_file, keep_unknown=settings.unknown_events == "keep")
        self.redis: redis.asyncio.Redis | None = None
        self.redis_ok = not settings.redis_url
        hub_journal: Journal | None = None
        if journal is None and settings.redis_url:
            # Sized on purpose (redis-py 8 caps a pool at 100 and fails at once past it): commands
            # share a pool that waits up to pool_timeout_s for a free connection, and a call that
            # still gets none is told to the viewer that needed it. socket_timeout bounds every call on
            # a stalled Redis; blocking tails (one connection per watched conversation) get their own
            # pool without one (their reads are bounded by the tailer itself).
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=settings.redis_max_connections,
                timeout=settings.redis_pool_timeout_s, socket_timeout=5, socket_connect_timeout=2,
            )  # fmt: skip
            tails = redis.asyncio.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=settings.redis_max_tails,
                timeout=settings.redis_pool_timeout_s, socket_connect_timeout=2,
            )  # fmt: skip
            self.redis = redis.asyncio.Redis(connection_pool=pool)
            self._tail_redis = redis.asyncio.Redis(connection_pool=tails)
            journal = RedisJournal(self.redis, prefix=settings.redis_key_prefix, max_events=settings.journal_max_events,
                                   max_age_s=settings.journal_max_age_s)  # fmt: skip
            # A thousand viewers joining at once cost one head call, not a thousand.
            hub_journal = BatchedReads(journal)
        if journal is None:
            journal = MemoryJournal(settings.journal_max_events, settings.journal_max_age_s,
                                    max_conversations=settings.journal_max_conversations)  # fmt: skip
        self.journal: Journal = journal
        self.hub = Hub(hub_journal or self.journal, settings.queue_max_messages, settings.queue_max_bytes,
                       settings.replay_max_events)  # fmt: skip
        self.data_loss: tuple[float, str] | None = None  # (when, what) Redis lost under us, for /readyz
        if settings.coalesce:
            self.hub.coalesce_after = settings.coalesce_after
        self.hq = HqClient(
            settings.hq_base_url, settings.hq_token, settings.hq_connect_timeout_s, settings.hq_idle_timeout_s
        )
        self.sink = LocalSink(self.journal, self.hub, self.metrics)
        activations = None
        if settings.upstream_activation_burst:
            activations = TokenBuckets(settings.upstream_activations_per_s, settings.upstream_activation_burst)
        self.upstreams = UpstreamRegistry(self._new_upstream, settings.hq_linger_s,
                                          max_upstreams=settings.max_upstreams, activations=activations)  # fmt: skip
        if isinstance(self.journal, MemoryJournal):
            self.journal.in_use = lambda c: self.hub.viewers(c) > 0 or self.upstreams.get(c) is not None
            self.journal.on_retired = self.hub.forget
        self.metrics.conversations.set_function(self._active_conversations)
        self.presence = Presence(instance=self.instance_id, hub=self.hub, upstreams=self.upstreams,
                                 registry=self.metrics.registry, max_subjects=settings.presence_max_subjects,
                                 interval_s=settings.presence_interval_s, store=self._presence_store())  # fmt: skip
        self.shutting_down = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drained = False
        self.on_drain: list[Callable[[], Awaitable[None]]] = []
        self._submissions: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.bridge: Bridge | None = None  # started and stopped by the app's lifespan
        if settings.bridge_url:
            cluster: dict[str, Any] = {}
            if self.redis is not None:
                # Pins and cursors shared through Redis; only the conversation's lease holder sends.
                cluster = {
                    "cursors": RedisCursorStore(self.redis, settings.redis_key_prefix, settings.journal_max_age_s),
                    "pins": RedisPinStore(self.redis, settings.redis_key_prefix),
                    "owns": self._leads,
                    "shared_pins": True,
                }
            self.bridge = Bridge(settings, journal=self.journal, hub=self.hub, upstreams=self.upstreams,
                                 metrics=self.metrics, **cluster)  # fmt: skip

    def _presence_store(self) -> RedisPresence | None:
        if self.redis is None:
            return None
        return RedisPresence(self.redis, self._tail_redis, prefix=self.settings.redis_key_prefix,
                             instance=self.instance_id, interval_s=self.settings.presence_interval_s,
                             ttl_s=self.settings.presence_ttl_s)  # fmt: skip

    def remember_submission(self, conversation_id: str, key: str) -> bool:
        """True the first time an idempotency key is seen for a conversation (within an hour)."""
        now = time.monotonic()
        while self._submissions and (
            len(self._submissions) > SUBMISSION_KEYS or next(iter(self._submissions.values())) < now - 3600
        ):
            self._submissions.popitem(last=False)
        if (conversation_id, key) in self._submissions:
            return False
        self._submissions[(conversation_id, key)] = now
        return True

    def forget_submission(self, conversation_id: str, key: str) -> None:
        """A submission that failed before reaching HQ: its key may be used again as a first one."""
        self._submissions.pop((conversation_id, key), None)

    def _new_upstream(self, conversation_id: str) -> Activation:
        s = self.settings

        def upstream(sink: Sink) -> ConversationUpstream:
            return ConversationUpstream(
                conversation_id,
                hq=self.hq,
                journal=self.journal,
                sink=sink,
                mapping=self.mapping,
                backoff=Backoff(s.hq_backoff_initial_s, s.hq_backoff_max_s),
                metrics=self.metrics,
            )

        if self.redis is None or not isinstance(self.journal, RedisJournal):
            return upstream(self.sink)
        return ClusteredConversation(
            conversation_id,
            redis_client=self.redis,
            tail_client=self._tail_redis,
            journal=self.journal,
            hub=self.hub,
            mapping=self.mapping,
            owner=self.instance_id,
            lease_ttl_ms=s.redis_lease_ttl_ms,
            make_upstream=upstream,
            outage_notice_s=s.redis_outage_notice_s,
            on_data_loss=self.note_data_loss,
        )

    def note_data_loss(self, detail: str) -> None:
        """Redis lost data we relied on: /readyz says so for DATA_LOSS_NOTICE_S."""
        log.warning("redis data loss: %s", detail)
        self.data_loss = (time.monotonic(), detail)
        self.metrics.redis_data_loss.inc()

    def _active_conversations(self) -> int:
        """hqgw_active_conversations: conversations whose upstream runs or lingers in this process."""
        return sum(1 for state in self.upstreams.states().values() if state not in ("stopped", "failed"))

    def _leads(self, conversation_id: str) -> bool:
        """Cluster mode: whether this process holds the conversation's upstream lease."""
        activation = self.upstreams.get(conversation_id)
        return isinstance(activation, ClusteredConversation) and activation.is_leader

    async def start(self) -> None:
        """Background duties of a running process (Redis health probe, memory journal sweep)."""
        # Lease values name the instance: this line maps a lease holder to its PID (make soak kills it).
        log.info("gateway instance %s pid %d", self.instance_id, os.getpid())
        if self.redis is not None:
            self.spawn(self._watch_redis(), name="redis-health")
        if isinstance(self.journal, MemoryJournal):  # expiry must not wait for someone to read
            self.spawn(self.journal.run_sweeper(), name="journal-sweep")
        self.spawn(self.presence.run(), name="presence")

    async def _watch_redis(self) -> None:
        assert self.redis is not None
        # A marker every process shares, written once per Redis dataset: when it vanishes or changes,
        # Redis lost its data (restart without persistence, failover to an empty replica, a flush).
        marker = f"{self.settings.redis_key_prefix}:dataset"
        dataset: bytes | str | None = None
        while True:
            try:
                async with asyncio.timeout(2):
                    await self.redis.set(marker, uuid.uuid4().hex, nx=True)
                    current = await self.redis.get(marker)
                if dataset is not None and current != dataset:
                    self._dataset_lost()
                dataset = current
                if not self.redis_ok:
                    log.info("redis reachable again")
                self.redis_ok = True
            except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
                if self.redis_ok:
                    log.warning("redis unreachable: %s", exc)
                self.redis_ok = False
            self.metrics.redis_up.set(1 if self.redis_ok else 0)
            await asyncio.sleep(1.0)

    def _dataset_lost(self) -> None:
        # Each conversation's tail finds its own journal gone and tells its viewers (JournalTailer).
        self.note_data_loss("Redis restarted without its data (or was flushed)")

    def readiness(self) -> dict[str, dict[str, Any]]:
        """What /readyz reports: one entry per dependency, each with ok and a detail."""
        states = self.upstreams.states()
        checks: dict[str, dict[str, Any]] = {
            "config": {"ok": True, "detail": "loaded"},
            "shutdown": {
                "ok": not self.shutting_down.is_set(),
                "detail": "draining" if self.shutting_down.is_set() else "no",
            },
            "journal": {"ok": True, "detail": type(self.journal).__name__},
            "redis": self._redis_check(),
            "upstreams": {
                "ok": True,
                "detail": {s: sum(1 for v in states.values() if v == s) for s in set(states.values())},
            },
        }
        checks["hq"] = self.hq.state.readiness()
        if self.bridge is not None:
            checks["bridge"] = self.bridge.readiness()
        return checks

    def _redis_check(self) -> dict[str, Any]:
        check: dict[str, Any] = {"ok": self.redis_ok, "detail": self._redis_detail()}
        if self.data_loss is not None:
            since, detail = self.data_loss
            age = time.monotonic() - since
            if age < DATA_LOSS_NOTICE_S:
                # Not ready while viewers re-sync onto new journal incarnations; it clears by itself.
                check.update(ok=False, detail=f"data loss {age:.0f}s ago: {detail}", dataLoss=True)
        return check

    def _redis_detail(self) -> str:
        if self.redis is None:
            return "not configured"
        return "reachable" if self.redis_ok else "unreachable: reconnecting"

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Start a background task the gateway owns and cancels on shutdown."""
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def begin_shutdown(self) -> None:
        """Tell every viewer the process is going away, before the server stops accepting."""
        if not self.shutting_down.is_set():
            log.info("shutting down: closing viewers")
            self.shutting_down.set()
            self.hub.close_all("shutdown")

    async def drain(self) -> None:
        """Shutdown, first half: close every viewer politely while the server still runs."""
        if self._drained:
            return
        self._drained = True
        self.begin_shutdown()
        for hook in self.on_drain:
            with suppress(Exception):
                await hook()

    async def close(self) -> None:
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task
        await self.presence.close()
        await self.upstreams.close()
        await self.hq.close()
        await self.journal.close()
        if self.redis is not None:
            await self.redis.aclose()
            await self._tail_redis.aclose()
