"""Presence: who watches each conversation, on every process, and what each upstream is doing.

Viewers are counted when they attach and detach, never per delivery. In memory mode this process is
the whole cluster; with Redis each process writes its own viewers per conversation (batched) and a
heartbeat snapshot of its conversations with a TTL (``gateway.presence_redis``), so a process that
dies without a goodbye drops out within ``GATEWAY_PRESENCE_TTL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

import redis.exceptions
from prometheus_client import CollectorRegistry, Gauge

from gateway.envelope import TurnPhase
from gateway.hub import Hub, Subscriber
from gateway.upstream.clustered import ClusteredConversation
from gateway.upstream.registry import Activation, UpstreamRegistry
from gateway.upstream.supervisor import ConversationUpstream, UpstreamState

if TYPE_CHECKING:
    from gateway.presence_redis import RedisPresence

log = logging.getLogger("gateway.presence")

REDIS_TROUBLE = (redis.exceptions.RedisError, OSError, TimeoutError)

DISCONNECTED_BY_ADMIN = "disconnected_by_admin"
DEBOUNCE_S = 0.05  # a burst of joins (a page of viewers reconnecting) is written once, and at most
DEBOUNCE_INTERVALS = 0.25  # one write per quarter interval: a hot conversation's churn costs Redis little
TOTALS_EVERY = 5  # heartbeats between two refreshes of the cluster-wide totals in /metrics

# A process's entry for one conversation: {"t": {transport: n}, "s": [[subject, transport, since_ms], ...],
# "u": upstream health}; "t"/"s" absent without local viewers, "u" absent without a local upstream.
Entry = dict[str, Any]


def iso_ms(epoch_ms: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as envelopes' ``createdAt``."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Viewer:
    """One attached viewer subscription (what presence lists; a handful of references, no task)."""

    __slots__ = ("conversation_id", "since_ms", "subject", "transport")

    def __init__(self, conversation_id: str, transport: str, subject: str) -> None:
        self.conversation_id = conversation_id
        self.transport = transport
        self.subject = subject
        self.since_ms = int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class ConversationPresence:
    """Viewers of one conversation across the cluster: counts by transport and (for admins) who."""

    conversation_id: str
    by_transport: dict[str, int]
    subjects: list[tuple[str, str, int]]  # (subject, transport, since epoch ms)

    @property
    def viewers(self) -> int:
        return sum(self.by_transport.values())

    def as_dict(self, *, with_subjects: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "conversationId": self.conversation_id,
            "viewers": self.viewers,
            "byTransport": dict(sorted(self.by_transport.items())),
        }
        if with_subjects:
            rows = sorted(self.subjects, key=lambda s: (s[2], s[0], s[1]))
            body["subjects"] = [{"subject": s, "transport": t, "since": iso_ms(ms)} for s, t, ms in rows]
        return body


def merge_presence(conversation_id: str, entries: Iterable[Entry]) -> ConversationPresence:
    """Sum the per-process entries of one conversation."""
    counts: dict[str, int] = {}
    subjects: list[tuple[str, str, int]] = []
    for entry in entries:
        for transport, n in entry.get("t", {}).items():
            counts[transport] = counts.get(transport, 0) + int(n)
        subjects.extend((str(s), str(t), int(ms)) for s, t, ms in entry.get("s", ()))
    return ConversationPresence(conversation_id, {t: n for t, n in counts.items() if n > 0}, subjects)


class LocalPresence:
    """This process's viewers by conversation, and which conversations changed since the last flush.

    Counts are kept as viewers come and go, so publishing a conversation costs O(transports) plus at
    most ``max_subjects`` subjects, however many watch it.
    """

    def __init__(self, max_subjects: int) -> None:
        self._max_subjects = max_subjects
        self._by_conversation: dict[str, set[Viewer]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self.dirty: set[str] = set()

    def attach(self, conversation_id: str, transport: str, subject: str) -> Viewer:
        viewer = Viewer(conversation_id, transport, subject)
        self._by_conversation.setdefault(conversation_id, set()).add(viewer)
        counts = self._counts.setdefault(conversation_id, {})
        counts[transport] = counts.get(transport, 0) + 1
        self.dirty.add(conversation_id)
        return viewer

    def detach(self, viewer: Viewer) -> None:
        conv = viewer.conversation_id
        viewers = self._by_conversation.get(conv)
        if viewers is None or viewer not in viewers:
            return
        viewers.discard(viewer)
        counts = self._counts[conv]
        counts[viewer.transport] -= 1
        if not counts[viewer.transport]:
            del counts[viewer.transport]
        if not viewers:
            del self._by_conversation[conv], self._counts[conv]
        self.dirty.add(conv)

    def conversations(self) -> list[str]:
        return list(self._by_conversation)

    def counts(self, conversation_id: str) -> dict[str, int]:
        return dict(self._counts.get(conversation_id, {}))

    def entry(self, conversation_id: str) -> Entry | None:
        """What this process publishes for one conversation; None without local viewers."""
        viewers = self._by_conversation.get(conversation_id)
        if not viewers:
            return None
        subjects = [[v.subject, v.transport, v.since_ms] for v in islice(viewers, self._max_subjects)]
        return {"t": self.counts(conversation_id), "s": subjects}


def upstream_health(activation: Activation, instance: str) -> Entry:
    """What this process knows of a conversation's upstream: full health where it holds the lease."""
    leader: ConversationUpstream | None
    if isinstance(activation, ClusteredConversation):
        leader = activation.leader
    else:
        leader = activation if isinstance(activation, ConversationUpstream) else None
    if leader is None:  # another process streams it (or the lease is changing hands)
        return {"state": _state(activation.state), "holder": None}
    return {
        "state": _state(leader.state),
        "holder": instance,
        "reconnects": leader.reconnects,
        "lastEventAt": None if leader.last_event_at is None else int(leader.last_event_at * 1000),
        "connectedSince": None if leader.connected_since is None else int(leader.connected_since * 1000),
        "turn": leader.turn.turn,
        "running": leader.turn.phase is TurnPhase.RUNNING,
        "ttftMs": leader.ttft_ms,
    }


def _state(state: UpstreamState) -> str:
    return "idle" if state is UpstreamState.STOPPED else state.value


def local_snapshot(local: LocalPresence, upstreams: UpstreamRegistry, instance: str) -> dict[str, Entry]:
    """Every conversation this process has viewers of or an upstream for, with what it knows."""
    snapshot: dict[str, Entry] = {}
    for conv in local.conversations():
        snapshot[conv] = {"t": local.counts(conv)}
    for conv in upstreams.states():
        activation = upstreams.get(conv)
        if activation is not None:
            snapshot.setdefault(conv, {})["u"] = upstream_health(activation, instance)
    return snapshot


def merge_snapshots(snapshots: Iterable[dict[str, Entry]]) -> dict[str, Entry]:
    """One entry per conversation across processes: summed viewers, the lease holder's upstream view."""
    merged: dict[str, Entry] = {}
    for snapshot in snapshots:
        for conv, entry in snapshot.items():
            into = merged.setdefault(conv, {"t": {}})
            for transport, n in entry.get("t", {}).items():
                into["t"][transport] = into["t"].get(transport, 0) + int(n)
            upstream, known = entry.get("u"), into.get("u")
            if upstream is not None and (known is None or (upstream.get("holder") and not known.get("holder"))):
                into["u"] = upstream  # the lease holder's view wins over a bystander's
    return merged


class PresenceMetrics:
    """Cluster-wide presence totals in /metrics; labels bounded (transport names only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.viewers = Gauge("hqgw_presence_viewers", "Viewers of the whole cluster by transport (presence)",
                             ["transport"], registry=registry)  # fmt: skip
        self.conversations = Gauge("hqgw_presence_conversations", "Conversations watched anywhere in the cluster",
                                   registry=registry)  # fmt: skip
        self.processes = Gauge("hqgw_presence_processes", "Gateway processes publishing presence", registry=registry)
        self._seen: set[str] = set()

    def update(self, merged: dict[str, Entry], processes: int) -> None:
        totals: dict[str, int] = {}
        watched = 0
        for entry in merged.values():
            counts = entry.get("t", {})
            if any(counts.values()):
                watched += 1
            for transport, n in counts.items():
                totals[transport] = totals.get(transport, 0) + n
        for transport in self._seen | set(totals):
            self.viewers.labels(transport).set(totals.get(transport, 0))
        self._seen |= set(totals)
        self.conversations.set(watched)
        self.processes.set(processes)


class Presence:
    """The presence and admin facade of one process: local registry, cluster store when Redis is set."""

    def __init__(
        self, *, instance: str, hub: Hub, upstreams: UpstreamRegistry, registry: CollectorRegistry,
        max_subjects: int, interval_s: float, store: RedisPresence | None = None,
    ) -> None:  # fmt: skip
        self.instance = instance
        self.local = LocalPresence(max_subjects)
        self._hub = hub
        self._upstreams = upstreams
        self._interval_s = interval_s
        self.store = store  # cluster mode: shared through Redis
        self.metrics = PresenceMetrics(registry)
        self._changed: asyncio.Event | None = None

    def attach(self, conversation_id: str, transport: str, subject: str) -> Viewer:
        """A viewer subscribed: counted once here, at attach time."""
        viewer = self.local.attach(conversation_id, transport, subject)
        self._wake()
        return viewer

    def detach(self, viewer: Viewer) -> None:
        self.local.detach(viewer)
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def snapshot(self) -> dict[str, Entry]:
        return local_snapshot(self.local, self._upstreams, self.instance)

    async def conversation(self, conversation_id: str) -> ConversationPresence:
        if self.store is None:
            entry = self.local.entry(conversation_id)
            return merge_presence(conversation_id, [entry] if entry else [])
        return merge_presence(conversation_id, await self.store.conversation(conversation_id))

    async def conversations(self) -> dict[str, Entry]:
        """Every active conversation of the cluster (merged); memory mode: this process."""
        if self.store is None:
            return merge_snapshots([self.snapshot()])
        return merge_snapshots(await self.store.snapshots())

    async def disconnect(self, conversation_id: str) -> int:
        """End every viewer of a conversation here now, and on every other process through Redis."""
        ended = self.end_local(conversation_id)
        if self.store is not None:
            await self.store.publish_disconnect(conversation_id)
        return ended

    def end_local(self, conversation_id: str) -> int:
        ended = self._hub.fail_conversation(conversation_id, DISCONNECTED_BY_ADMIN, affected=_not_failed)
        if ended:
            log.info("admin disconnect conversation=%s viewers=%d", conversation_id, ended)
        return ended

    async def run(self) -> None:
        """Background duty: publish changes (batched) and heartbeats; keep the /metrics totals fresh."""
        self._changed = asyncio.Event()
        listener = None
        if self.store is not None:
            listener = asyncio.create_task(self.store.listen(self.end_local), name="presence-disconnects")
        try:
            next_totals = 0.0
            while True:
                with suppress(TimeoutError):
                    async with asyncio.timeout(self._interval_s):
                        await self._changed.wait()
                        await asyncio.sleep(max(DEBOUNCE_S, DEBOUNCE_INTERVALS * self._interval_s))
                self._changed.clear()
                if self.store is None:
                    self.metrics.update(merge_snapshots([self.snapshot()]), 1)
                    continue
                try:
                    await self.store.publish(self.local, self.snapshot)
                except Exception:  # a bug here must not end presence for the life of the process
                    log.exception("presence publish failed")
                if time.monotonic() >= next_totals:
                    next_totals = time.monotonic() + TOTALS_EVERY * self._interval_s
                    await self._refresh_totals()
        finally:
            if listener is not None:
                listener.cancel()
                with suppress(asyncio.CancelledError):
                    await listener

    async def _refresh_totals(self) -> None:
        assert self.store is not None
        try:
            snapshots = await self.store.snapshots()
        except REDIS_TROUBLE as exc:  # reported by /readyz; the totals wait for the next refresh
            log.debug("presence totals not refreshed: %s", exc)
            return
        self.metrics.update(merge_snapshots(snapshots), len(snapshots))

    async def close(self) -> None:
        """Clean shutdown: leave presence at once instead of after the TTL."""
        if self.store is not None:
            with suppress(Exception):
                async with asyncio.timeout(1):
                    await self.store.leave(self.local)


def _not_failed(sub: Subscriber) -> bool:
    return sub.failure is None
