"""The scenarios of issue 7: idle, wide, fast, many and upstream-heavy (slow-mobile lives in slow_mobile.py)."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from benchmarks.procstat import cpu_seconds, rss_kib
from benchmarks.slow_mobile import SlowMobile
from benchmarks.targets import Server, Target


def profile_name(scenario: str, target: str) -> str:
    """``wide`` for the headline STOMP-WS target, ``wide-gateway-sse`` for the others."""
    return scenario if target == "gateway-stomp" else f"{scenario}-{target}"


class Bench(SlowMobile):
    """Runs each scenario against a target, one fresh server process per (scenario, target)."""

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
                time.sleep(0.5)
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
            time.sleep(self.plan.idle_window_s)
            idle_cpu = (cpu_seconds(server.pid) - cpu0) / self.plan.idle_window_s
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
                points = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "p99_delta_ms", "cpu_us_per_delivery")
                curve.append({"viewers": connected, **{k: result.get(k) for k in points}})
            if plan.profile and target_name in plan.profile_targets:
                self._profile(profile_name("wide", target_name), server, conversation, connected, deltas, interval)
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
            if plan.profile and target_name in plan.profile_targets:
                self._profile(
                    profile_name("fast", target_name), server, conversation, opened["opened"], deltas, interval
                )
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

    def cluster(self, target_name: str) -> dict[str, Any]:
        """Issue 14: one conversation at 20 events/s, 1,000 then 2,000 viewers; single process or cluster.

        The cluster targets split the viewers over 2 gateways sharing one redis-server, and their CPU
        is every gateway's plus redis-server's. The top-level figures are the first step's (1,000).
        """
        plan = self.plan

        def body(target: Target, server: Server) -> dict[str, Any]:
            conversation = [str(uuid.uuid4())]
            interval = 1000.0 / plan.cluster_rate
            deltas = max(1, round(plan.window_s * plan.cluster_rate))
            points: list[dict[str, Any]] = []
            connected = 0
            for step in plan.cluster_steps:
                opened = (
                    self._attach(target, server, conversation, step - connected)
                    if connected == 0
                    else self._open(target, server, conversation, step - connected)
                )
                connected += opened["opened"]
                time.sleep(0.5)
                result = self._repeat(server, conversation, connected, deltas, interval, plan.repeat)
                points.append({"viewers": connected, "failed": opened["failed"], **result})
            first = points[0] if points else {}
            return {
                **{k: v for k, v in first.items() if k != "runs"},
                "conversations": 1,
                "rate_per_s": plan.cluster_rate,
                "processes": len(server.pids),
                "points": [{k: v for k, v in p.items() if k != "runs"} for p in points],
                "upstreams": self.sim.upstreams(conversation),
            }

        return self._with_server(target_name, body)
