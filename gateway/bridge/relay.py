"""The bridge as the gateway sees it: lifecycle, pins (each holding its upstream), housekeeping, health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from gateway.backoff import Backoff
from gateway.bridge.link import BrokerLink, Link, Post, TlsOptions
from gateway.bridge.pins import Pinned
from gateway.bridge.sender import Sender
from gateway.bridge.store import BridgeCursorStore, MemoryCursorStore, MemoryPinStore, Pin, PinKind, PinStore
from gateway.bridge.target import destination_for, parse_broker_url, parse_pin_policy
from gateway.bridge.window import ConversationCursor
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.hub import Hub
from gateway.journal.base import Journal
from gateway.metrics import Metrics
from gateway.upstream.registry import UpstreamRegistry

log = logging.getLogger("gateway.bridge")

PIN_SYNC_S = 2.0  # cluster mode: how soon a replica follows pins made elsewhere
HOUSEKEEPING_S = 0.25  # receipt watchdog, cursor checkpoints, expiry of idle "submitted" pins
FLUSH_S = 2.0  # at shutdown: how long waiting for the broker to confirm the backlog may delay the exit
LINK_STOP_S = 3.0
CONNECT_TIMEOUT_S = 10.0
LinkFactory = Callable[[Post, Sender], Link]


class BridgeStopping(GatewayError):
    """A pin was requested while the gateway shuts down."""


class Bridge:
    """Relays every envelope of pinned conversations to the broker: in order, at least once."""

    def __init__(
        self,
        settings: Settings,
        *,
        journal: Journal,
        hub: Hub,
        upstreams: UpstreamRegistry,
        metrics: Metrics,
        cursors: BridgeCursorStore | None = None,
        pins: PinStore | None = None,
        link_factory: LinkFactory | None = None,
        owns: Callable[[str], bool] | None = None,
        shared_pins: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = parse_broker_url(settings.bridge_url)
        self.policy = parse_pin_policy(settings.bridge_pin)
        self._settings = settings
        self._upstreams = upstreams
        self._metrics = metrics
        self._cursors: BridgeCursorStore = cursors or MemoryCursorStore()
        self._pin_store: PinStore = pins or MemoryPinStore()
        self._link_factory = link_factory or self._broker_link
        self._clock = clock
        self._pinned: dict[str, Pinned] = {}
        self.sender = Sender(
            self._pinned,
            journal=journal,
            hub=hub,
            cursors=self._cursors,
            metrics=metrics,
            window=settings.bridge_window,
            # Cluster mode: only the conversation's lease holder bridges it (the others keep it pinned).
            owns=owns or (lambda _conversation_id: True),
            clock=clock,
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self._pins_loaded = False
        # Cluster mode: pins live in Redis; every replica follows them (only the lease holder sends).
        self._shared_pins = shared_pins
        self._last_sync = 0.0
        self._stopping = False
        metrics.bridge_lag.set_function(self.sender.lag)

    def _broker_link(self, post: Post, sender: Sender) -> Link:
        s = self._settings
        tls = TlsOptions(s.bridge_tls_ca_file, s.bridge_tls_cert_file, s.bridge_tls_key_file, s.bridge_tls_verify)
        backoff = Backoff(s.bridge_backoff_initial_s, s.bridge_backoff_max_s)
        return BrokerLink(self.target, sender, post, backoff=backoff, tls=tls, heartbeat_ms=s.bridge_heartbeat_ms,
                          connect_timeout_s=CONNECT_TIMEOUT_S)  # fmt: skip

    @property
    def connected(self) -> bool:
        return bool(self.sender.generation)

    async def start(self) -> None:
        """Connect (in the background), pin the configured and the stored conversations."""
        loop = asyncio.get_running_loop()

        def post(fn: Callable[..., None], *args: Any) -> None:
            with suppress(RuntimeError):  # the loop is closed: the process is exiting anyway
                loop.call_soon_threadsafe(fn, *args)

        self.sender.link = self._link_factory(post, self.sender)
        self.sender.link.start()
        for conversation_id in self.policy.conversations:
            await self.pin(conversation_id, PinKind.CONFIG)
        await self._load_stored_pins()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="bridge-housekeeping")

    async def stop(self) -> None:
        """Give the backlog a moment to be confirmed, save cursors, disconnect from the broker."""
        if self._stopping:
            return
        self._stopping = self.sender.stopping = True
        with suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_S):
                while self._flushing():  # noqa: ASYNC110 (polls derived state, at most FLUSH_S)
                    await asyncio.sleep(0.02)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.wait([self._housekeeping])  # not `await task`: that would swallow our own cancel
        for pinned in list(self._pinned.values()):
            await pinned.cancel()
        await self._checkpoint()
        if self.sender.link is not None:
            await asyncio.to_thread(self.sender.link.stop, LINK_STOP_S)
        self._metrics.bridge_connected.set(0)

    def _flushing(self) -> bool:
        """Still connected, and something journaled is not confirmed yet."""
        s = self.sender
        return bool(s.generation) and bool(s.window.outstanding or s.lag())

    # ---- pins ------------------------------------------------------------------------------------

    def get(self, conversation_id: str) -> Pinned | None:
        return self._pinned.get(conversation_id)

    def pins(self) -> list[Pinned]:
        return [self._pinned[c] for c in sorted(self._pinned)]

    async def pin(self, conversation_id: str, kind: PinKind, since: int | None = None) -> tuple[Pinned, bool]:
        """Bridge a conversation and hold its upstream open; True when the pin is new."""
        pinned = self._pinned.get(conversation_id)
        if pinned is not None:
            pinned.active_at = self._clock()
            if kind.permanent and not pinned.pin.kind.permanent:  # a PUT makes a "submitted" pin permanent
                pinned.pin = Pin(conversation_id, kind, pinned.pin.pinned_at)
                await self._store_pin(pinned.pin)
            return pinned, False
        if self._stopping:
            raise BridgeStopping("the bridge is shutting down")
        pin = Pin(conversation_id, kind, time.time())
        await self._store_pin(pin)
        if self._stopping:
            raise BridgeStopping("the bridge is shutting down")
        if (pinned := self._pinned.get(conversation_id)) is not None:  # pinned meanwhile
            return pinned, False
        cursor = ConversationCursor(since) if since is not None else None
        pinned = Pinned(pin, destination_for(self._settings.bridge_destination, conversation_id), cursor, self._clock())
        self._pinned[conversation_id] = pinned
        self._upstreams.hold(conversation_id, "pin")
        pinned.tasks = [
            asyncio.create_task(self.sender.pump(pinned), name=f"bridge-pump:{conversation_id}"),
            asyncio.create_task(self.sender.doorbell(pinned), name=f"bridge-doorbell:{conversation_id}"),
        ]
        log.info("pinned conversation=%s kind=%s", conversation_id, kind.value)
        return pinned, True

    async def pin_submitted(self, conversation_id: str) -> None:
        """GATEWAY_BRIDGE_PIN=submitted: a turn was submitted through the gateway. Never raises."""
        if not self.policy.submitted or self._stopping:
            return
        try:
            await self.pin(conversation_id, PinKind.SUBMITTED)
        except Exception:
            log.exception("could not pin submitted conversation=%s", conversation_id)

    async def unpin(self, conversation_id: str) -> bool:
        """Stop bridging a conversation; its cursor is kept, so a later pin resumes without repeats."""
        pinned = self._pinned.pop(conversation_id, None)
        if pinned is not None:
            await pinned.cancel()
            self.sender.forget(conversation_id)
            if pinned.loaded and pinned.cursor.confirmed:
                await self._save({conversation_id: pinned.cursor.confirmed})
            self._upstreams.release(conversation_id, "pin")
            log.info("unpinned conversation=%s", conversation_id)
        await self._pin_store.delete(conversation_id)
        return pinned is not None

    async def _store_pin(self, pin: Pin) -> None:
        if pin.kind is not PinKind.CONFIG:  # config pins come from settings at every start
            await self._pin_store.put(pin)

    async def _load_stored_pins(self) -> None:
        try:
            stored = await self._pin_store.load()
        except Exception as exc:  # e.g. Redis down at start: housekeeping retries
            log.warning("cannot load stored pins yet: %s", exc)
            return
        self._pins_loaded = True
        for pin in stored:
            await self.pin(pin.conversation_id, pin.kind)

    async def _sync_shared_pins(self) -> None:
        """Follow pins made or removed by other replicas."""
        self._last_sync = self._clock()
        stored = {pin.conversation_id: pin for pin in await self._pin_store.load()}
        for conversation_id, pin in stored.items():
            if conversation_id not in self._pinned:
                await self.pin(conversation_id, pin.kind)
        for conversation_id, pinned in list(self._pinned.items()):
            if pinned.pin.kind is not PinKind.CONFIG and conversation_id not in stored:
                pinned_obj = self._pinned.pop(conversation_id)
                await pinned_obj.cancel()
                self.sender.forget(conversation_id)
                self._upstreams.release(conversation_id, "pin")
                log.info("pin removed elsewhere conversation=%s", conversation_id)

    # ---- housekeeping ----------------------------------------------------------------------------

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self._housekeep_once()
            except Exception:  # never lose the watchdog over one failed store call
                log.exception("housekeeping failed")

    async def _housekeep_once(self) -> None:
        self.sender.check_receipts(self._settings.bridge_receipt_timeout_s)
        await self._checkpoint()
        if not self._pins_loaded:
            await self._load_stored_pins()
        elif self._shared_pins and self._clock() - self._last_sync >= PIN_SYNC_S:
            await self._sync_shared_pins()
        now, linger = self._clock(), self._settings.bridge_submitted_linger_s
        for pinned in list(self._pinned.values()):
            if pinned.pin.kind is PinKind.SUBMITTED and pinned.idle(now, linger):
                log.info("submitted pin expired conversation=%s", pinned.conversation_id)
                await self.unpin(pinned.conversation_id)

    async def _checkpoint(self) -> None:
        dirty = self.sender.dirty
        if dirty:
            batch = {c: self._pinned[c].cursor.confirmed for c in dirty if c in self._pinned}
            dirty.clear()
            await self._save(batch)

    async def _save(self, cursors: dict[str, int]) -> None:
        try:
            await self._cursors.save(cursors)
        except Exception as exc:  # keep them dirty: the next checkpoint retries
            self.sender.dirty.update(cursors)
            log.warning("cursor checkpoint failed: %s", exc)

    # ---- health ----------------------------------------------------------------------------------

    def lag(self) -> int:
        return self.sender.lag()

    def readiness(self) -> dict[str, Any]:
        """The /readyz entry: a dead broker degrades the bridge only, so it never fails readiness."""
        s = self.sender
        detail = {
            "connected": self.connected,
            "broker": self.target.display,
            "pins": len(self._pinned),
            "lag": s.lag(),
            "inFlight": s.window.outstanding,
            "resends": s.resends,
            "reconnects": s.reconnects,
            "gaps": sum(p.gaps for p in self._pinned.values()),
            "lastError": s.last_error,
        }
        return {"ok": True, "detail": detail}
