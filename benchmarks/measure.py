"""Measured turns: the simulator plays one scripted turn per conversation at the scenario's rate.

The server's CPU is read from /proc before the turns are submitted and after the last expected envelope
reached the last viewer (or a deadline passed), and divided by the deliveries the viewers counted.
Repeats are summarized by their medians; correctness counters (gaps, duplicates, missing) are summed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Collected, LoadClient
from benchmarks.plan import Plan
from benchmarks.procstat import cpu_seconds, cpu_times
from benchmarks.profiling import Recording, hotspots
from benchmarks.targets import EXTRA_EVENTS_PER_TURN, TARGETS, Server, Simulator, Target

SUM_KEYS = ("missing", "gaps", "duplicates", "stale", "closed", "fast_missing", "fast_gaps", "fast_duplicates")


def _cpu_times(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) summed over ``pids``: one server, or every process of a cluster."""
    times = [cpu_times(pid) for pid in pids]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def turn_text(deltas: int, interval_ms: float) -> str:
    return f"benchmark turn [deltas={deltas}] [interval_ms={interval_ms:g}] [tools=0] [artifacts=0]"


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(collected: Collected | None) -> dict[str, float]:
    ordered = sorted(collected.latencies) if collected else []
    deltas = sorted(collected.delta_latencies) if collected else []
    return {
        "p50_ms": round(percentile(ordered, 50), 2),
        "p90_ms": round(percentile(ordered, 90), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "p999_ms": round(percentile(ordered, 99.9), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
        # The paced reply deltas alone: the turn's closing burst (usage, final, done at once) left out.
        "p50_delta_ms": round(percentile(deltas, 50), 2),
        "p99_delta_ms": round(percentile(deltas, 99), 2),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every number over the repeats; sums for the correctness counters."""
    out: dict[str, Any] = {"repeats": len(runs)}
    keys = dict.fromkeys(k for r in runs for k in r)
    for key in keys:
        values = [v for r in runs if isinstance(v := r.get(key), int | float) and not isinstance(v, bool)]
        if values:
            out[key] = sum(values) if key in SUM_KEYS else round(statistics.median(values), 3)
    errors = [e for r in runs for e in r.get("errors", [])]
    if errors:
        out["errors"] = errors[:3]
    out["runs"] = runs
    return out


class Harness:
    """The building blocks every scenario uses: open viewers, run measured turns, one server per scenario."""

    def __init__(
        self, plan: Plan, sim: Simulator, client: LoadClient, log_dir: Path, out_dir: Path, say: Callable[[str], None]
    ) -> None:
        self.plan = plan
        self.sim = sim
        self.client = client
        self.log_dir = log_dir
        self.out_dir = out_dir
        self.say = say
        self.profiles: dict[str, Any] = {}

    # -- building blocks --------------------------------------------------------------------

    def _open(
        self,
        target: Target,
        server: Server,
        conversations: list[str],
        per_conversation: int,
        group: str = "main",
        **options: Any,
    ) -> dict[str, Any]:
        ports = server.ports or [server.port]  # a cluster's viewers are spread over its gateways
        specs = [
            target.spec(ports[i % len(ports)], c, group, **options)
            for c in conversations
            for i in range(per_conversation)
        ]
        started = time.monotonic()
        result = self.client.open(specs)
        result["open_s"] = round(time.monotonic() - started, 2)
        if result["failed"]:
            self.say(f"    {result['failed']} of {len(specs)} viewers failed to open: {result['errors'][:2]}")
        return result

    def _attach(
        self, target: Target, server: Server, conversations: list[str], per_conversation: int, **options: Any
    ) -> dict[str, Any]:
        opened = self._open(target, server, conversations, per_conversation, **options)
        server.feed(conversations)
        if not self.sim.wait_upstreams(conversations):
            self.say("    upstreams did not all open within 30 s")
        return opened

    def _turn(
        self,
        server: Server,
        conversations: list[str],
        viewers: int,
        deltas: int,
        interval_ms: float,
        group: str = "main",
        grace_s: float = 5.0,
    ) -> dict[str, Any]:
        """One measured turn per conversation; ``viewers`` is the total watching them."""
        expected = viewers * (deltas + EXTRA_EVENTS_PER_TURN)
        self.client.reset()
        (user0, sys0), started = _cpu_times(server.pids), time.monotonic()
        client0 = sum(cpu_seconds(pid) for pid in self.client.pids)
        self.sim.submit(conversations, turn_text(deltas, interval_ms), spread_s=min(1.0, interval_ms / 1000.0))
        deadline = time.monotonic() + (deltas + 2) * interval_ms / 1000.0 + grace_s
        received = 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            received = self.client.progress().get(group, 0)
            if received >= expected:
                break
        (user1, sys1), wall = _cpu_times(server.pids), time.monotonic() - started
        client_cpu = sum(cpu_seconds(pid) for pid in self.client.pids) - client0
        collected = self.client.collect().get(group)
        messages = collected.messages if collected else 0
        cpu = (user1 - user0) + (sys1 - sys0)
        return {
            "deliveries": messages,
            "expected": expected,
            "missing": max(0, expected - messages),
            "gaps": collected.gaps if collected else 0,
            "duplicates": collected.duplicates if collected else 0,
            "stale": collected.stale if collected else 0,
            "closed": collected.closed if collected else 0,
            **latency_summary(collected),
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "server_cpu_pct": round(100.0 * cpu / wall, 1),
            "server_sys_share_pct": round(100.0 * (sys1 - sys0) / cpu, 1) if cpu else None,
            "client_cpu_pct": round(100.0 * client_cpu / wall, 1),
            "cpu_us_per_delivery": round(1e6 * cpu / messages, 2) if messages else None,
            "deliveries_per_s": round(messages / wall, 1),
            "wire_bytes": collected.wire_bytes if collected else 0,
            "errors": collected.errors[:3] if collected else [],
        }

    def _repeat(
        self, server: Server, conversations: list[str], viewers: int, deltas: int, interval_ms: float, times: int
    ) -> dict[str, Any]:
        runs = [self._turn(server, conversations, viewers, deltas, interval_ms) for _ in range(times)]
        return median_of(runs)

    def _with_server(self, target_name: str, body: Callable[[Target, Server], dict[str, Any]]) -> dict[str, Any]:
        target = TARGETS[target_name]
        server = Server(target, self.sim, self.log_dir)
        try:
            return body(target, server)
        finally:
            self.client.close_viewers()
            server.stop()

    def _profile(
        self, name: str, server: Server, conversations: list[str], viewers: int, deltas: int, interval_ms: float
    ) -> None:
        recording = Recording(server.pid, self.out_dir / f"profile-{name}")
        try:  # twice the window: more samples
            run = self._turn(server, conversations, viewers, 2 * deltas, interval_ms)
        finally:
            recording.stop()
        self.profiles[name] = {
            "target": server.target.name,
            "svg": recording.svg.name,
            "under_profiler": {k: run[k] for k in ("p99_ms", "cpu_us_per_delivery")},
            **hotspots(recording.raw),
        }
        self.say(f"    profiled {name}: {self.profiles[name]['samples']} samples → {recording.svg.name}")
