"""Issue 10's slow-mobile scenario: some viewers read slowly while a long reply streams fast.

Three variants of the same turn on one server: every viewer fast (the control), 10 slow viewers with
coalescing (the default), and 10 slow viewers that opted out (``coalesce:false``). Reported: frames and
bytes a slow viewer received, whether and when it caught up with the turn's last envelope, and the fast
viewers' p99 against the control.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from benchmarks.measure import Harness, median_of
from benchmarks.targets import EXTRA_EVENTS_PER_TURN, Server, Target


class SlowMobile(Harness):
    """The slow-mobile scenario (mixed into ``scenarios.Bench``)."""

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
