"""The sending half of the bridge: the receipt window, link events and one pump per pinned conversation.

Each pump reads the journal after its conversation's bridge cursor rather than taking envelopes
from the hub: the cursor may trail the live edge by a whole broker outage, hub queues are bounded
and coalesce deltas for viewers, and the journal is the one place that holds every envelope in
order. The hub only rings a doorbell (a cursorless subscription whose content is ignored) so a new
envelope is relayed at once; a short poll covers appends the local hub never sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress

from gateway.backoff import Backoff
from gateway.bridge.link import Link, Outgoing
from gateway.bridge.pins import Pinned
from gateway.bridge.store import BridgeCursorStore
from gateway.bridge.window import ConversationCursor, ReceiptWindow
from gateway.errors import GatewayError
from gateway.hub import Hub, SubscriberStale
from gateway.journal.base import Journal
from gateway.metrics import Metrics

log = logging.getLogger("gateway.bridge")

POLL_S = 0.5  # re-check after this long when nothing wakes a pump (e.g. a ring lost in a resubscribe)
IDLE_POLL_MAX_S = 5.0  # a quiet conversation's fallback poll backs off to this (one journal read each)
BATCH = 128  # most envelopes one pump reads per round, so pumps share the window


class Sender:
    """Moves journaled envelopes of pinned conversations through the receipt window onto the link."""

    def __init__(
        self,
        pinned: dict[str, Pinned],
        *,
        journal: Journal,
        hub: Hub,
        cursors: BridgeCursorStore,
        metrics: Metrics,
        window: int,
        owns: Callable[[str], bool],
        clock: Callable[[], float],
    ) -> None:
        self._pinned = pinned  # shared with the Bridge, which adds and removes pins
        self._journal = journal
        self._hub = hub
        self._cursors = cursors
        self._metrics = metrics
        self._owns = owns
        self._clock = clock
        self.window = ReceiptWindow(window)
        self.link: Link | None = None
        self.generation = 0  # of the live connection; 0 while disconnected
        self.dirty: set[str] = set()  # conversations whose confirmed cursor is not saved yet
        self.stopping = False
        self.resends = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._slots = asyncio.Event()
        self._healthy = True  # the current connection got a RECEIPT (or none was expected yet)

    def forget(self, conversation_id: str) -> None:
        """The conversation was unpinned: free its window slots."""
        if self.window.forget(conversation_id):
            self._slots.set()
        self.dirty.discard(conversation_id)

    def check_receipts(self, timeout_s: float) -> None:
        """Reconnect when the oldest SEND waited longer than ``timeout_s`` for its RECEIPT."""
        age = self.window.oldest_age(self._clock())
        if self.generation and self.link is not None and age is not None and age > timeout_s:
            self.last_error = f"no RECEIPT within {timeout_s:g} s"
            log.warning("%s; reconnecting", self.last_error)
            self.link.reset(self.generation, "receipt timeout")
            self.generation = 0  # pause the pumps until the link reports the new connection

    def lag(self) -> int:
        """Envelopes journaled for pinned conversations but not yet confirmed by the broker."""
        return sum(p.lag for p in self._pinned.values())

    # ---- link events (called on the loop thread through post) -----------------------------------

    def on_link_up(self, generation: int) -> None:
        self.generation = generation
        self._healthy = False
        self._metrics.bridge_connected.set(1)
        for pinned in self._pinned.values():
            pinned.wake.set()

    def on_link_down(self, generation: int, reason: str) -> None:
        self.generation = 0
        self._metrics.bridge_connected.set(0)
        self.reconnects += 1
        dropped = self.window.clear()
        for pinned in self._pinned.values():
            pinned.cursor.rewind()
        self._slots.set()
        # A connection that never got a RECEIPT failed like the previous one: the link logs the retries.
        level = logging.WARNING if self._healthy and not self.stopping else logging.DEBUG
        log.log(level, "broker link lost (%s); %d unconfirmed envelopes will be resent", reason, dropped)

    def on_receipt(self, receipt_id: str) -> None:
        sent = self.window.confirm(receipt_id)
        if sent is None:
            return  # a receipt from before a reconnect, or DISCONNECT's: already being resent
        self._slots.set()
        self._healthy = True
        self.last_error = None  # the broker accepts again: an earlier ERROR or timeout is over
        pinned = self._pinned.get(sent.conversation_id)
        if pinned is not None and pinned.cursor.record_receipt(sent.seq):
            self.dirty.add(sent.conversation_id)
            pinned.active_at = self._clock()

    def on_broker_error(self, message: str) -> None:
        # Every SEND of a refused destination draws the same ERROR: say it once per episode.
        log.log(logging.DEBUG if message == self.last_error else logging.WARNING, "%s", message)
        self.last_error = message

    # ---- pumping ---------------------------------------------------------------------------------

    async def pump(self, pinned: Pinned) -> None:
        """Send one conversation's journal after its cursor, as the window allows; forever."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self._round(pinned)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the journal's Redis is down: retry, never lose the pump
                log.warning("pump paused conversation=%s: %s", pinned.conversation_id, exc,
                            exc_info=not isinstance(exc, GatewayError))  # fmt: skip
                await asyncio.sleep(backoff.next_delay())

    async def _round(self, pinned: Pinned) -> None:
        conversation_id = pinned.conversation_id
        generation = self.generation
        if not generation:
            await pinned.sleep(POLL_S)
            return
        if not self._owns(conversation_id):
            pinned.loaded = False  # the lease holder advances the stored cursor meanwhile
            await pinned.sleep(POLL_S)
            return
        if not pinned.loaded:
            # Nothing of this conversation is in flight here before its cursor is known.
            stored = await self._cursors.load(conversation_id)
            if self.window.forget(conversation_id):
                self._slots.set()
            pinned.cursor = ConversationCursor(max(stored or 0, pinned.cursor.confirmed))
            pinned.loaded = True
        if not self.window.free:
            self._slots.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._slots.wait()
            return
        head = await self._journal.head(conversation_id)
        pinned.head, pinned.oldest = head.seq, head.oldest
        if pinned.cursor.sent >= head.seq:
            woken = await pinned.sleep(max(POLL_S, pinned.idle_wait))
            pinned.idle_wait = 0.0 if woken else min(IDLE_POLL_MAX_S, 2 * max(POLL_S, pinned.idle_wait))
            return
        envs = await self._journal.read(conversation_id, pinned.cursor.sent, min(BATCH, self.window.free))
        if generation != self.generation or not envs or self._pinned.get(conversation_id) is not pinned:
            return  # the connection changed while reading: the next round starts from the cursor
        sent = pinned.cursor.sent
        if sent and envs[0].seq > sent + 1:
            pinned.gaps += envs[0].seq - sent - 1
            log.warning("conversation=%s seqs %d-%d expired from the journal before the broker took them",
                        conversation_id, sent + 1, envs[0].seq - 1)  # fmt: skip
        now = self._clock()
        assert self.link is not None
        for env in envs[: self.window.free]:
            receipt = self.window.track(conversation_id, env.seq, now)
            if pinned.cursor.record_send(env.seq):
                pinned.resends += 1
                self.resends += 1
                self._metrics.bridge_resends.inc()
            headers = {
                "content-type": "application/json",
                "seq": str(env.seq),
                "conversation-id": conversation_id,
                "stage": env.stage,
                "persistent": "true",  # RabbitMQ/ActiveMQ: survive a broker restart in durable queues
                "receipt": receipt,
            }
            self.link.send(Outgoing(generation, pinned.destination, env.body, headers))
        pinned.active_at = now

    async def doorbell(self, pinned: Pinned) -> None:
        """Wake the pump whenever the hub publishes for this conversation; the content is ignored."""
        while True:
            try:
                sub, _ = await self._hub.subscribe(pinned.conversation_id, None)
            except Exception as exc:  # the pump polls meanwhile
                log.warning("doorbell paused conversation=%s: %s", pinned.conversation_id, exc,
                            exc_info=not isinstance(exc, GatewayError))  # fmt: skip
                await asyncio.sleep(POLL_S)
                continue
            try:
                while True:
                    envs = await sub.next_batch()
                    if envs:
                        pinned.head = max(pinned.head, envs[-1].seq)
                        pinned.wake.set()
            except SubscriberStale:
                pinned.wake.set()  # cut loose (or the hub is shutting down): resubscribe shortly
                await asyncio.sleep(0.05)
            finally:
                self._hub.unsubscribe(sub)
