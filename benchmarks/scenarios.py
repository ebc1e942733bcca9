"""The scenarios of issue 7 (idle, wide, fast, many, upstream-heavy) and issue 10 (slow-mobile).

Each traffic measurement is one scripted turn per conversation played by the simulator at the
scenario's rate; the server's CPU is read from /proc before the turn is submitted and after the last
expected envelope reached the last viewer (or a deadline passed), and divided by the deliveries the
viewers counted.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Collected, LoadClient
from benchmarks.procstat import cpu_seconds, cpu_times, rss_kib
from benchmarks.profiling import Recording, hotspots
from benchmarks.targets import EXTRA_EVENTS_PER_TURN, TARGETS, Server, Simulator, Target

SUM_KEYS = ("missing", "gaps", "duplicates", "stale", "closed", "fast_missing", "fast_gaps", "fast_duplicates")


@dataclass(slots=True)
class Plan:
    """Sizes of one run; ``quick`` / default / ``full`` presets are built in run.py."""

    mode: str = "default"
    repeat: int = 3
    workers: int = 2
    idle_viewers: int = 2000
    window_s: float = 3.0  # length of one measured turn (wide, fast)
    wide_viewers: int = 1000
    wide_steps: tuple[int, ...] = (100, 300)  # extra points of the latency-vs-viewers curve (measured once)
    wide_rate: float = 20.0
    fast_viewers: int = 50
    fast_rate: float = 400.0
    many_conversations: int = 100
    many_viewers: int = 10
    many_rate: float = 2.0
    many_window_s: float = 4.0
    heavy_conversations: int = 1000
    heavy_rate: float = 1.0
    heavy_window_s: float = 4.0
    slow_viewers: int = 100
    slow_count: int = 10
    slow_deltas: int = 2000
    slow_rate: float = 200.0
    slow_read_bps: float = 32 * 1024
    slow_rcvbuf: int = 8192
    slow_catchup_cap_s: float = 12.0
    slow_target: str = "gateway-stomp"
    slow_repeat: int = 3
    profile: bool = False
    targets: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def turn_text(deltas: int, interval_ms: float) -> str:
    return f"benchmark turn [deltas={deltas}] [interval_ms={interval_ms:g}] [tools=0] [artifacts=0]"


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(collected: Collected | None) -> dict[str, float]:
    ordered = sorted(collected.latencies) if collected else []
    return {
        "p50_ms": round(percentile(ordered, 50), 2),
        "p90_ms": round(percentile(ordered, 90), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "p999_ms": round(percentile(ordered, 99.9), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
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


class Bench:
    """Runs scenarios against targets, one fresh server process per (scenario, target)."""

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
        specs = [target.spec(server.port, c, group, **options) for c in conversations for _ in range(per_conversation)]
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
        (user0, sys0), started = cpu_times(server.pid), time.monotonic()
        client0 = sum(cpu_seconds(pid) for pid in self.client.pids)
        self.sim.submit(conversations, turn_text(deltas, interval_ms), spread_s=min(1.0, interval_ms / 1000.0))
        deadline = time.monotonic() + (deltas + 2) * interval_ms / 1000.0 + grace_s
        received = 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            received = self.client.progress().get(group, 0)
            if received >= expected:
                break
        (user1, sys1), wall = cpu_times(server.pid), time.monotonic() - started
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
            "svg": recording.svg.name,
            "under_profiler": {k: run[k] for k in ("p99_ms", "cpu_us_per_delivery")},
            **hotspots(recording.raw),
        }
        self.say(f"    profiled {name}: {self.profiles[name]['samples']} samples → {recording.svg.name}")

    # -- scenarios ----------------------------------------------------------------------------

    def idle(self, target_name: str) -> dict[str, Any]:
        """N idle viewers of one conversation: RSS per viewer (in ``repeat`` batches), idle CPU."""

        def body(target: Target, server: Server) -> dict[str, Any]:
            conversation = [str(uuid.uuid4())]
            total = target.limit(self.plan.idle_viewers)
            self._attach(target, server, conversation, 20)  # warm-up: imports, pools, the upstream
            time.sleep(1.0)
            before = previous = rss_kib(server.pid)
            batches: list[dict[str, Any]] = []
            opened_total = failed_total = 0
            size = max(1, total // self.plan.repeat)
            for i in range(self.plan.repeat):
                n = size if i < self.plan.repeat - 1 else total - size * (self.plan.repeat - 1)
                opened = self._open(target, server, conversation, n)
                time.sleep(1.0)
                rss = rss_kib(server.pid)
                opened_total += opened["opened"]
                failed_total += opened["failed"]
                per = (rss - previous) / max(1, opened["opened"])
                batches.append(
                    {
                        "viewers": opened["opened"],
                        "rss_delta_kib": rss - previous,
                        "kib_per_viewer": round(per, 2),
                        "open_s": opened["open_s"],
                    }
                )
                previous = rss
            cpu0 = cpu_seconds(server.pid)
            time.sleep(3.0)
            idle_cpu = (cpu_seconds(server.pid) - cpu0) / 3.0
            upstreams = self.sim.upstreams(conversation)
            return {
                "viewers": opened_total,
                "failed": failed_total,
                "kib_per_viewer": round(statistics.median(b["kib_per_viewer"] for b in batches), 2),
                "kib_per_viewer_overall": round((previous - before) / max(1, opened_total), 2),
                "rss_mib": round(previous / 1024, 1),
                "idle_cpu_pct": round(100 * idle_cpu, 2),
                "connects_per_s": round(opened_total / max(0.01, sum(b["open_s"] for b in batches)), 1),
                "batches": batches,
                "upstreams": upstreams,
            }

        return self._with_server(target_name, body)

    def wide(self, target_name: str) -> dict[str, Any]:
        """One conversation, many viewers, 20 events/s; the latency-vs-viewers curve on the way up."""
        plan = self.plan

        def body(target: Target, server: Server) -> dict[str, Any]:
            conversation = [str(uuid.uuid4())]
            interval = 1000.0 / plan.wide_rate
            deltas = max(1, round(plan.window_s * plan.wide_rate))
            top = target.limit(plan.wide_viewers)
            steps = sorted({target.limit(s) for s in plan.wide_steps if s < top} | {top})
            curve: list[dict[str, Any]] = []
            connected = 0
            result: dict[str, Any] = {}
            for step in steps:
                opened = (
                    self._attach(target, server, conversation, step - connected)
                    if connected == 0
                    else self._open(target, server, conversation, step - connected)
                )
                connected += opened["opened"]
                time.sleep(0.5)
                times = plan.repeat if step == top else 1
                result = self._repeat(server, conversation, connected, deltas, interval, times)
                points = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_us_per_delivery")
                curve.append({"viewers": connected, **{k: result.get(k) for k in points}})
            if plan.profile and target_name == "gateway-stomp":
                self._profile("wide", server, conversation, connected, deltas, interval)
            return {
                "viewers": connected,
                "conversations": 1,
                "rate_per_s": plan.wide_rate,
                **result,
                "curve": curve,
                "upstreams": self.sim.upstreams(conversation),
            }

        return self._with_server(target_name, body)

    def fast(self, target_name: str) -> dict[str, Any]:
        """One conversation, 50 viewers, 400 events/s."""
        plan = self.plan

        def body(target: Target, server: Server) -> dict[str, Any]:
            conversation = [str(uuid.uuid4())]
            viewers = target.limit(plan.fast_viewers)
            opened = self._attach(target, server, conversation, viewers)
            time.sleep(0.3)
            interval = 1000.0 / plan.fast_rate
            deltas = max(1, round(plan.window_s * plan.fast_rate))
            result = self._repeat(server, conversation, opened["opened"], deltas, interval, plan.repeat)
            if plan.profile and target_name == "gateway-stomp":
                self._profile("fast", server, conversation, opened["opened"], deltas, interval)
            return {
                "viewers": opened["opened"],
                "conversations": 1,
                "rate_per_s": plan.fast_rate,
                **result,
                "upstreams": self.sim.upstreams(conversation),
            }

        return self._with_server(target_name, body)

    def many(self, target_name: str) -> dict[str, Any]:
        """Many conversations with a few viewers each, a slow trickle per conversation."""
        plan = self.plan
        return self._spread(target_name, plan.many_conversations, plan.many_viewers, plan.many_rate, plan.many_window_s)

    def upstream_heavy(self, target_name: str) -> dict[str, Any]:
        """1,000 active conversations with one viewer each: exactly one upstream per conversation."""
        plan = self.plan
        return self._spread(target_name, plan.heavy_conversations, 1, plan.heavy_rate, plan.heavy_window_s)

    def _spread(self, target_name: str, conversations_n: int, per: int, rate: float, window_s: float) -> dict[str, Any]:
        plan = self.plan

        def body(target: Target, server: Server) -> dict[str, Any]:
            n = max(1, target.limit(conversations_n * per) // per)
            conversations = [str(uuid.uuid4()) for _ in range(n)]
            opened = self._attach(target, server, conversations, per)
            time.sleep(0.5)
            interval = 1000.0 / rate
            deltas = max(1, round(window_s * rate))
            result = self._repeat(server, conversations, opened["opened"], deltas, interval, plan.repeat)
            return {
                "viewers": opened["opened"],
                "conversations": n,
                "rate_per_s": rate,
                "total_events_per_s": rate * n,
                **result,
                "upstreams": self.sim.upstreams(conversations),
            }

        return self._with_server(target_name, body)

    def slow_mobile(self) -> dict[str, Any]:
        """Issue 10: 100 viewers, 10 reading slowly, a 2,000-delta turn at 200/s; with and without coalescing."""
        plan = self.plan

        def body(target: Target, server: Server) -> dict[str, Any]:
            variants: dict[str, list[dict[str, Any]]] = {"all-fast": [], "coalesce": [], "no-coalesce": []}
            for _ in range(plan.slow_repeat):
                for name in variants:
                    slow = 0 if name == "all-fast" else plan.slow_count
                    variants[name].append(self._slow_variant(target, server, slow, coalesce=name != "no-coalesce"))
            out: dict[str, Any] = {
                "viewers": plan.slow_viewers,
                "slow_viewers": plan.slow_count,
                "slow_read_kib_s": plan.slow_read_bps / 1024,
                "deltas": plan.slow_deltas,
                "rate_per_s": plan.slow_rate,
                "transport": target.name,
            }
            for name, runs in variants.items():
                out[name] = median_of(runs)
            base = out["all-fast"].get("fast_p99_ms")
            for name in ("coalesce", "no-coalesce"):
                p99 = out[name].get("fast_p99_ms")
                out[name]["fast_p99_vs_all_fast"] = round(p99 / base, 2) if base and p99 else None
            return out

        return self._with_server(plan.slow_target, body)

    def _slow_variant(self, target: Target, server: Server, slow: int, *, coalesce: bool) -> dict[str, Any]:
        plan = self.plan
        conversation = [str(uuid.uuid4())]
        fast = plan.slow_viewers - slow
        self._attach(target, server, conversation, fast, group="fast")
        if slow:
            self._open(
                target,
                server,
                conversation,
                slow,
                group="slow",
                coalesce=coalesce,
                rcvbuf=plan.slow_rcvbuf,
                rate_bps=plan.slow_read_bps,
            )
        time.sleep(0.3)
        envelopes = plan.slow_deltas + EXTRA_EVENTS_PER_TURN
        interval = 1000.0 / plan.slow_rate
        fast_run = self._turn(server, conversation, fast, plan.slow_deltas, interval, group="fast")
        result: dict[str, Any] = {
            "envelopes": envelopes,
            "fast_p50_ms": fast_run["p50_ms"],
            "fast_p99_ms": fast_run["p99_ms"],
            "fast_missing": fast_run["missing"],
            "fast_gaps": fast_run["gaps"],
            "fast_duplicates": fast_run["duplicates"],
            "server_cpu_s": fast_run["cpu_s"],
        }
        if slow:
            done_seq = max((v["last_seq"] for v in self.client.viewer_detail("fast")), default=0)
            deadline = time.monotonic() + plan.slow_catchup_cap_s
            detail = self.client.viewer_detail("slow")
            while time.monotonic() < deadline and not all(v["cut"] or v["last_seq"] >= done_seq for v in detail):
                time.sleep(0.25)
                detail = self.client.viewer_detail("slow")
            caught = [v for v in detail if v["last_seq"] >= done_seq and not v["cut"]]
            first_seq = done_seq - envelopes  # the seq before the turn's first envelope
            collected = self.client.collect().get("slow")
            result.update(
                {
                    "slow_frames": statistics.median(v["frames"] for v in detail) if detail else 0,
                    "slow_kib": round(statistics.median(v["bytes"] for v in detail) / 1024, 1) if detail else 0,
                    "slow_caught_up": len(caught),
                    "slow_progress_pct": round(
                        100 * statistics.median((v["last_seq"] - first_seq) / envelopes for v in detail), 1
                    )
                    if detail
                    else None,
                    "slow_cut_loose": sum(int(v["cut"]) for v in detail),
                    "slow_stale_notices": collected.stale if collected else 0,
                    "slow_catch_up_s": round(statistics.median(v["last_latency_ms"] for v in caught) / 1000, 2)
                    if caught
                    else None,
                    "slow_catch_up_max_s": round(max(v["last_latency_ms"] for v in caught) / 1000, 2)
                    if caught
                    else None,
                    "slow_errors": collected.errors[:2] if collected else [],
                }
            )
        self.client.close_viewers()
        return result
