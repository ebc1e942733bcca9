"""Per-conversation counters served at ``/_sim/stats``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    """Counters keyed by conversation id; ``open_streams`` lists only conversations with a stream open."""

    open_streams: Counter[str] = field(default_factory=Counter)
    stream_opens: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    turns_started: Counter[str] = field(default_factory=Counter)
    turns_completed: Counter[str] = field(default_factory=Counter)

    def stream_closed(self, conv_id: str) -> None:
        self.open_streams[conv_id] -= 1
        if self.open_streams[conv_id] <= 0:
            del self.open_streams[conv_id]

    def as_json(self) -> dict[str, dict[str, int]]:
        return {
            "open_streams": dict(self.open_streams),
            "stream_opens": dict(self.stream_opens),
            "messages": dict(self.messages),
            "turns_started": dict(self.turns_started),
            "turns_completed": dict(self.turns_completed),
        }
