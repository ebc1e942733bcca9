"""The receipt window and per-conversation bridge cursors: pure bookkeeping, no I/O.

Every SEND carries a ``receipt`` header. The window bounds how many SENDs wait for their RECEIPT
(pipelining without unbounded memory); a conversation's cursor advances only over a contiguous
prefix of receipted seqs, so a lost connection never skips an envelope that was not confirmed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InFlight:
    """One SEND awaiting its RECEIPT."""

    conversation_id: str
    seq: int
    sent_at: float


class ConversationCursor:
    """How far one conversation is bridged: ``confirmed`` by the broker, ``sent`` on the wire."""

    __slots__ = ("_done", "_in_flight", "confirmed", "resend_upto", "sent")

    def __init__(self, confirmed: int = 0) -> None:
        self.confirmed = confirmed
        self.sent = confirmed
        # Highest seq sent before the last reconnect: sends up to it are resends (metrics only).
        self.resend_upto = 0
        self._in_flight: deque[int] = deque()
        self._done: set[int] = set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def record_send(self, seq: int) -> bool:
        """Note a SEND of ``seq`` (strictly after ``sent``); True when it repeats an earlier send."""
        if seq <= self.sent:
            raise ValueError(f"seq {seq} sent out of order (already sent {self.sent})")
        self._in_flight.append(seq)
        self.sent = seq
        return seq <= self.resend_upto

    def record_receipt(self, seq: int) -> bool:
        """The broker accepted ``seq``; True when ``confirmed`` moved."""
        if seq not in self._in_flight:
            return False
        self._done.add(seq)
        moved = False
        # Receipts normally arrive in order; should one overtake another, wait for the gap to close.
        while self._in_flight and self._in_flight[0] in self._done:
            self._done.discard(self._in_flight[0])
            self.confirmed = self._in_flight.popleft()
            moved = True
        return moved

    def rewind(self) -> int:
        """The connection is gone: forget what was in flight and resend after ``confirmed``."""
        dropped = len(self._in_flight)
        self.resend_upto = max(self.resend_upto, self.sent)
        self.sent = self.confirmed
        self._in_flight.clear()
        self._done.clear()
        return dropped

    def lag(self, head: int, oldest: int) -> int:
        """Envelopes retained in the journal but not yet confirmed (the expired ones cannot count)."""
        return max(0, head - max(self.confirmed, oldest - 1))


class ReceiptWindow:
    """At most ``size`` SENDs await a RECEIPT at any time, across all conversations."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the receipt window needs at least one slot")
        self.size = size
        self._next = 0
        self._pending: dict[str, InFlight] = {}  # insertion order = send order: first is the oldest

    @property
    def free(self) -> int:
        return self.size - len(self._pending)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def track(self, conversation_id: str, seq: int, now: float) -> str:
        """Reserve a slot for a SEND; returns its receipt id."""
        if not self.free:
            raise OverflowError("receipt window is full")
        self._next += 1
        receipt = f"b{self._next}"
        self._pending[receipt] = InFlight(conversation_id, seq, now)
        return receipt

    def confirm(self, receipt: str) -> InFlight | None:
        """A RECEIPT arrived; None for ids this window no longer tracks (a dropped connection's)."""
        return self._pending.pop(receipt, None)

    def forget(self, conversation_id: str) -> int:
        """Drop one conversation's SENDs (it was unpinned); their receipts will be ignored."""
        gone = [r for r, f in self._pending.items() if f.conversation_id == conversation_id]
        for receipt in gone:
            del self._pending[receipt]
        return len(gone)

    def clear(self) -> int:
        """Drop everything (the connection is gone); returns how many SENDs were in flight."""
        dropped = len(self._pending)
        self._pending.clear()
        return dropped

    def oldest_age(self, now: float) -> float | None:
        """Seconds the oldest unanswered SEND has waited; None when nothing is in flight."""
        for first in self._pending.values():
            return now - first.sent_at
        return None
