"""The sizes of one benchmark run: ``make bench`` (default), ``--quick`` and ``--full``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Plan:
    """Sizes of one run (the defaults are ``make bench``); ``quick()`` and ``full()`` are the other presets."""

    mode: str = "default"
    repeat: int = 3
    workers: int = 2
    idle_viewers: int = 2000
    window_s: float = 3.0  # length of one measured turn (wide, fast)
    idle_window_s: float = 2.0  # idle CPU is read over this long, every viewer connected
    wide_viewers: int = 1000
    wide_steps: tuple[int, ...] = (100, 300)  # extra points of the latency-vs-viewers curve (measured once)
    wide_rate: float = 20.0
    fast_viewers: int = 50
    fast_rate: float = 400.0
    many_conversations: int = 100
    many_viewers: int = 10
    many_rate: float = 2.0
    many_window_s: float = 3.0
    heavy_conversations: int = 1000
    heavy_rate: float = 1.0
    heavy_window_s: float = 3.0
    slow_viewers: int = 100
    slow_count: int = 10
    slow_deltas: int = 2000
    slow_rate: float = 200.0
    slow_read_bps: float = 32 * 1024
    slow_rcvbuf: int = 8192
    slow_catchup_cap_s: float = 15.0  # coalescing slow viewers need ~8-10 s
    cluster_steps: tuple[int, ...] = (1000, 2000)  # viewers of one conversation, single process vs cluster
    cluster_rate: float = 20.0
    slow_target: str = "gateway-stomp"
    slow_repeat: int = 3
    profile: bool = False
    profile_targets: tuple[str, ...] = ("gateway-stomp",)  # py-spy'd under wide and fast
    targets: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def quick(cls) -> Plan:
        """One repeat, smaller N, shorter turns: a few minutes, for development."""
        return cls(
            mode="quick",
            repeat=1,
            idle_viewers=1000,
            window_s=2.0,
            wide_steps=(100,),
            many_window_s=3.0,
            heavy_window_s=3.0,
            slow_catchup_cap_s=12.0,
            slow_repeat=1,
        )

    @classmethod
    def full(cls) -> Plan:
        """10,000 idle viewers, longer turns, a finer viewers curve: 15+ minutes, for the record."""
        return cls(
            mode="full",
            idle_viewers=10_000,
            window_s=5.0,
            wide_steps=(100, 300, 600),
            many_window_s=10.0,
            heavy_window_s=10.0,
            slow_catchup_cap_s=30.0,
        )
