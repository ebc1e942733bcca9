"""The runtime state of one pinned conversation, and how the admin API shows it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from gateway.bridge.store import Pin
from gateway.bridge.window import ConversationCursor


class Pinned:
    """A conversation being bridged: its pin, cursor, last journal head seen and its two tasks."""

    __slots__ = ("active_at", "cursor", "destination", "gaps", "head", "idle_wait", "loaded", "oldest", "pin",
                 "resends", "tasks", "wake")  # fmt: skip

    def __init__(self, pin: Pin, destination: str, cursor: ConversationCursor | None, now: float) -> None:
        self.pin = pin
        self.destination = destination
        # Without an explicit start the cursor comes from the store, read by the pump (loaded=False).
        self.cursor = cursor or ConversationCursor(0)
        self.loaded = cursor is not None
        self.head = 0
        self.oldest = 1
        self.gaps = 0  # envelopes that expired from the journal before the broker confirmed them
        self.resends = 0
        self.active_at = now
        self.wake = asyncio.Event()
        self.idle_wait = 0.0  # the pump's current fallback poll while caught up (grows when nothing comes)
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def conversation_id(self) -> str:
        return self.pin.conversation_id

    @property
    def lag(self) -> int:
        return self.cursor.lag(self.head, self.oldest)

    def idle(self, now: float, linger_s: float) -> bool:
        """Caught up with the journal and quiet for ``linger_s``: a transient pin may go."""
        return self.loaded and not self.cursor.in_flight and self.lag == 0 and now - self.active_at >= linger_s

    async def sleep(self, timeout: float) -> bool:
        """Wait for a wake-up (new envelope, reconnect) or ``timeout``; True when woken."""
        woken = True
        try:
            async with asyncio.timeout(timeout):
                await self.wake.wait()
        except TimeoutError:
            woken = False
        self.wake.clear()
        return woken

    async def cancel(self) -> None:
        """Cancel the pump and doorbell and wait for them (a cancel of the caller still propagates)."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks)
        self.tasks = []

    def view(self) -> dict[str, Any]:
        """The admin API's JSON for this pin."""
        return {
            "conversationId": self.conversation_id,
            "kind": self.pin.kind.value,
            "pinnedAt": datetime.fromtimestamp(self.pin.pinned_at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "destination": self.destination,
            "cursor": self.cursor.confirmed,
            "sent": self.cursor.sent,
            "head": self.head,
            "lag": self.lag,
            "inFlight": self.cursor.in_flight,
            "resends": self.resends,
            "gaps": self.gaps,
        }
