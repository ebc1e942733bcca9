"""Where the bridge keeps its state: per-conversation cursors and the pin set (protocols + memory).

A Redis implementation plugs in behind the same protocols (suggested layout):

* cursor: ``{prefix}:{<id>}:bridge`` — string, the last broker-confirmed seq; same hash tag as the
  journal so it lives on the journal's slot; TTL = journal retention (refreshed on save).
* pins: ``{prefix}:bridge:pins`` — hash, field = conversation id, value = ``{"kind", "pinnedAt"}``
  JSON. One key for the whole set: pins are few and are listed together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

MEMORY_CURSORS = 100_000


class PinKind(StrEnum):
    """Why a conversation is bridged; only ``submitted`` pins expire by themselves."""

    CONFIG = "config"  # GATEWAY_BRIDGE_PIN list: re-created at every start, never stored
    API = "api"  # PUT /api/v1/bridge/conversations/{id}: stored until DELETE
    SUBMITTED = "submitted"  # a turn was submitted through the gateway: stored, expires when idle

    @property
    def permanent(self) -> bool:
        return self is not PinKind.SUBMITTED


@dataclass(frozen=True, slots=True)
class Pin:
    """One bridged conversation."""

    conversation_id: str
    kind: PinKind
    pinned_at: float  # wall clock, seconds


class BridgeCursorStore(Protocol):
    """The broker-confirmed seq of each conversation, saved in batches (at-least-once across crashes)."""

    async def load(self, conversation_id: str) -> int | None:
        """The saved cursor, None when the conversation was never bridged."""
        ...

    async def save(self, cursors: Mapping[str, int]) -> None:
        """Save several cursors; a cursor never moves backwards."""
        ...


class PinStore(Protocol):
    """Pins that must survive a restart (``api`` and ``submitted``)."""

    async def load(self) -> list[Pin]: ...

    async def put(self, pin: Pin) -> None: ...

    async def delete(self, conversation_id: str) -> None: ...


class MemoryCursorStore:
    """Cursors in process memory, least recently saved dropped beyond ``limit`` (memory stays bounded)."""

    def __init__(self, limit: int = MEMORY_CURSORS) -> None:
        self._limit = limit
        self._cursors: OrderedDict[str, int] = OrderedDict()

    async def load(self, conversation_id: str) -> int | None:
        return self._cursors.get(conversation_id)

    async def save(self, cursors: Mapping[str, int]) -> None:
        for conversation_id, seq in cursors.items():
            self._cursors[conversation_id] = max(seq, self._cursors.get(conversation_id, 0))
            self._cursors.move_to_end(conversation_id)
        while len(self._cursors) > self._limit:
            self._cursors.popitem(last=False)


class MemoryPinStore:
    """Pins in process memory: they last as long as the process (no Redis configured)."""

    def __init__(self) -> None:
        self._pins: dict[str, Pin] = {}

    async def load(self) -> list[Pin]:
        return list(self._pins.values())

    async def put(self, pin: Pin) -> None:
        self._pins[pin.conversation_id] = pin

    async def delete(self, conversation_id: str) -> None:
        self._pins.pop(conversation_id, None)
