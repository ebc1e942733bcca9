"""``make soak`` / ``python -m benchmarks.soak.run [--quick]``: nothing lost at scale and under faults.

One redis-server, two ``hq-gateway serve`` processes sharing it, the HQ simulator, and a multi-process
load client of logical viewers over STOMP/WebSocket, STOMP/SockJS and SSE. Each phase takes fresh
conversations, opens its viewers, runs turns (submitted through the gateways' REST API) with joins,
leaves and reloads going on, injects one fault, heals it, waits for the viewers to settle, and checks
every viewer envelope by envelope against the journal recorded from Redis (benchmarks.soak.check).
Writes ``benchmarks/results/soak/latest.md`` and ``latest.json`` (+ a dated copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.procstat import cpu_seconds, load_average
from benchmarks.run import machine, revision
from benchmarks.soak import report
from benchmarks.soak.check import check_phase
from benchmarks.soak.cluster import Cluster, lease_key
from benchmarks.soak.loadgen import SoakClient
from benchmarks.soak.recorder import JournalRecorder, UpstreamSampler
from benchmarks.soak.viewers import SoakSpec
from benchmarks.targets import HOST, TOKEN

RESULTS = Path(__file__).parents[1] / "results" / "soak"
KINDS = ("stomp", "sockjs", "sse")
PHASES = (
    "baseline",
    "lease-kill",
    "redis-restart-persistent",
    "redis-restart-lost",
    "hq-drops",
    "hq-503-attach",
    "stalled-viewer",
)
# A stalled viewer must overflow its queue within the stall: 64 messages (~3 s of one conversation)
# behind a 16 KiB kernel send buffer (the kernel doubles it).
GATEWAY_ENV = {"GATEWAY_HUB_QUEUE_MAX_MESSAGES": "64", "GATEWAY_SOCKET_SNDBUF_BYTES": "16384"}


@dataclass(slots=True)
class SoakPlan:
    mode: str = "default"
    viewers: int = 2100  # per phase, all connected at once
    conversations: int = 6
    joiners: int = 150  # opened during traffic (per phase)
    churn_per_tick: int = 10  # per worker and second: this many leave, as many reload
    stallers: int = 6
    stall_s: float = 12.0
    traffic_s: float = 24.0  # turns run this long
    fault_at_s: float = 6.0
    fault_s: float = 6.0  # a fault that can be switched off stays on this long
    deltas: int = 40
    interval_ms: float = 40.0
    settle_s: float = 30.0  # the most the viewers get to catch up after the traffic
    workers: int = 2

    @classmethod
    def quick(cls) -> SoakPlan:
        return cls(mode="quick", viewers=300, conversations=4, joiners=30, churn_per_tick=3, stallers=4,
                   traffic_s=14.0, fault_at_s=4.0, fault_s=4.0, settle_s=20.0)  # fmt: skip


class TurnDriver:
    """Submits turn after turn to each conversation through the gateways' REST API until stopped."""

    def __init__(self, ports: Callable[[], list[int]], conversations: list[str], plan: SoakPlan) -> None:
        self._ports = ports
        self._conversations = conversations
        self._plan = plan
        self._stop = threading.Event()
        self.accepted: dict[str, int] = dict.fromkeys(conversations, 0)
        self.refused: dict[str, int] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(i, c), daemon=True) for i, c in enumerate(conversations)
        ]
        for t in self._threads:
            t.start()

    def _run(self, index: int, conversation: str) -> None:
        plan = self._plan
        text = f"soak turn [deltas={plan.deltas}] [interval_ms={plan.interval_ms:g}] [tools=1] [artifacts=0]"
        turn_s = plan.deltas * plan.interval_ms / 1000 + 0.6
        attempt = index
        with httpx.Client(timeout=15) as client:
            self._stop.wait(0.3 * index)  # out of phase
            while not self._stop.is_set():
                ports = self._ports()
                port = ports[attempt % len(ports)]
                attempt += 1
                try:
                    reply = client.post(
                        f"http://{HOST}:{port}/api/v1/conversation/message",
                        json={"conversationId": conversation, "message": text},
                    )
                    status = str(reply.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status in ("200", "202"):
                    self.accepted[conversation] += 1
                    self._stop.wait(turn_s)
                else:
                    self.refused[status] = self.refused.get(status, 0) + 1
                    self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)


class Soak:
    def __init__(self, plan: SoakPlan, cluster: Cluster, client: SoakClient, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.cluster = cluster
        self.client = client
        self.say = say
        self._redis = redis.Redis.from_url(cluster.redis.url, socket_timeout=2, socket_connect_timeout=1)
        self._vid = 0
        self._logged: dict[str, int] = {}

    def _specs(self, conversations: list[str], n: int, role: str, **extra: Any) -> list[SoakSpec]:
        ports = self.cluster.ports
        specs = []
        for i in range(n):
            self._vid += 1
            own = (self._vid // len(KINDS)) % len(ports)
            rotated = tuple(ports[own:] + ports[:own])
            specs.append(
                SoakSpec(
                    self._vid,
                    KINDS[self._vid % len(KINDS)],
                    conversations[i % len(conversations)],
                    rotated,
                    role=role,
                    **extra,
                )
            )
        return specs

    def _log_counts(self) -> dict[str, int]:
        """Lines of the gateways' logs naming each problem during this phase (the logs span the run)."""
        patterns = {
            "journal_unavailable": b"JournalUnavailable",
            "journal_conflict": b"JournalConflict",
            "max_connections": b"MaxConnectionsError",
            "tracebacks": b"Traceback",
        }
        totals = {k: sum(g.log_lines(p) for g in self.cluster.gateways) for k, p in patterns.items()}
        counts = {k: v - self._logged.get(k, 0) for k, v in totals.items()}
        self._logged = totals
        return counts

    def _live_ports(self) -> list[int]:
        return [g.port for g in self.cluster.gateways if g.alive] or self.cluster.ports

    def _wait_upstreams(self, conversations: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_streams = self.cluster.sim.stats()["open_streams"]
            if all(open_streams.get(c, 0) >= 1 for c in conversations):
                return True
            time.sleep(0.2)
        return False

    def holders(self, conversations: list[str]) -> dict[str, str]:
        out = {}
        for c in conversations:
            try:
                value = self._redis.get(lease_key(c))
            except (redis.exceptions.RedisError, OSError):
                value = None
            out[c] = value.decode() if value else ""
        return out

    # -- faults ---------------------------------------------------------------------------

    def fault(self, name: str, conversations: list[str]) -> dict[str, Any]:
        plan, cluster = self.plan, self.cluster
        if name == "lease-kill":
            holders = self.holders(conversations)
            victim = cluster.by_instance(holders[conversations[0]])
            if victim is None:
                return {"error": f"no live gateway holds the lease of {conversations[0]}: {holders}"}
            held = sum(1 for h in holders.values() if h == victim.instance)
            killed_pid = victim.pid
            killed_ms = time.time() * 1000
            victim.sigkill()
            self.client.dead([victim.port])
            self.say(f"    SIGKILL gateway-{victim.index} pid {victim.pid} (instance {victim.instance}, {held} leases)")
            time.sleep(plan.fault_s)
            victim.restart()
            self.client.dead([])
            return {"killed_pid": killed_pid, "instance": victim.instance, "leases_held": held,
                    "killed_ms": round(killed_ms), "restarted_ms": round(time.time() * 1000)}  # fmt: skip
        if name == "redis-restart-persistent":
            started = time.monotonic()
            cluster.redis.restart_keeping_data(down_s=2.0)
            return {
                "back_ms": round(time.time() * 1000),
                "down_s": round(time.monotonic() - started, 2),
                "persistence": "SHUTDOWN SAVE (RDB)",
            }
        if name == "redis-restart-lost":
            started = time.monotonic()
            cluster.redis.restart_losing_data(down_s=2.0)
            return {
                "back_ms": round(time.time() * 1000),
                "down_s": round(time.monotonic() - started, 2),
                "persistence": "none (SIGKILL, no file)",
            }
        if name == "hq-drops":
            cluster.sim.faults({"drop_every": 15})
            time.sleep(plan.fault_s)
            cluster.sim.faults({"clear": True})
            return {"drop_every": 15, "for_s": plan.fault_s}
        if name == "hq-503-attach":
            # Every stream (re)open meanwhile is refused: the drops force re-attaches into the 503s.
            cluster.sim.faults({"drop_every": 25, "status": 503, "count": 3 * len(conversations)})
            time.sleep(plan.fault_s)
            cluster.sim.faults({"clear": True})
            return {"drop_every": 25, "status": 503, "count": 3 * len(conversations)}
        if name == "stalled-viewer":
            stalled = self.client.stall(plan.stallers, plan.stall_s)
            return {"stalled": stalled, "stall_s": plan.stall_s}
        return {}

    # -- one phase ------------------------------------------------------------------------

    def phase(self, name: str) -> dict[str, Any]:
        plan, cluster = self.plan, self.cluster
        conversations = [str(uuid.uuid4()) for _ in range(plan.conversations)]
        cpu0 = {pid: cpu_seconds(pid) for pid in cluster.pids()}
        recorder = JournalRecorder(cluster.redis.url, conversations)
        sampler = UpstreamSampler(cluster.sim.url, TOKEN, conversations)
        late: list[str] = []
        fault_info: dict[str, Any] = {}
        if name == "hq-503-attach":
            # The first stream opens are refused, and half the conversations get their first turn
            # before any viewer: the turn itself must wait for the upstream (or be refused).
            cluster.sim.faults({"status": 503, "count": 2 * len(conversations)})
            late = conversations[len(conversations) // 2 :]
        early = [c for c in conversations if c not in late]
        stallers = plan.stallers if name == "stalled-viewer" else 0
        specs = self._specs(early, plan.viewers * len(early) // len(conversations) - stallers, "initial")
        specs += self._specs(early, stallers, "initial", rcvbuf=4096)
        opened = self.client.open(specs)
        if opened["failed"]:
            self.say(f"    {opened['failed']} of {len(specs)} viewers failed to open: {opened['errors'][:2]}")
        upstreams_ok = self._wait_upstreams(early, 30)
        driver = TurnDriver(self._live_ports, conversations, plan)
        started = time.monotonic()
        if late:
            time.sleep(1.0)
            late_specs = self._specs(late, plan.viewers - len(specs), "initial", since=0)
            late_opened = self.client.open(late_specs)
            opened = {k: opened[k] + late_opened[k] for k in ("opened", "failed")} | {"errors": opened["errors"]}
        joiners = self._specs(conversations, plan.joiners, "joiner")
        self.client.churn(plan.traffic_s - 3, 1.0, plan.churn_per_tick, joiners)
        time.sleep(max(0.0, plan.fault_at_s - (time.monotonic() - started)))
        self.say(f"    fault {name} at {time.monotonic() - started:.1f} s")
        fault_info = self.fault(name, conversations)
        time.sleep(max(0.0, plan.traffic_s - (time.monotonic() - started)))
        driver.stop()
        cluster.sim.faults({"clear": True})
        # Settle: every viewer still watching reaches the journal's newest seq, or the deadline passes.
        deadline = time.monotonic() + plan.settle_s
        behind: dict[str, int] = {}
        stable_since, last_newest = time.monotonic(), recorder.newest()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            newest = recorder.newest()
            if newest != last_newest:
                stable_since, last_newest = time.monotonic(), newest
            behind = self.client.behind(newest)
            if behind["behind"] == 0 and time.monotonic() - stable_since > 1.5:
                break
        end_ms = time.time() * 1000
        settle_s = round(plan.settle_s - max(0.0, deadline - time.monotonic()), 1)
        recorder.stop()
        upstream = sampler.stop()
        cpu = sum(cpu_seconds(pid) - cpu0.get(pid, 0.0) for pid in cluster.pids() if pid in cpu0)
        records, churn = self.client.collect()
        self.client.close()
        row = check_phase(records, recorder.truth, end_ms)
        hq_messages = cluster.sim.stats().get("messages", {})
        row.update(
            {
                "phase": name,
                "fault": fault_info,
                "opened": opened["opened"],
                "open_failed": opened["failed"],
                "open_errors": opened["errors"][:3],
                "upstreams_attached": upstreams_ok,
                "churn": churn,
                "turns_accepted": sum(driver.accepted.values()),
                "turns_refused": driver.refused,
                "turns_at_hq": sum(hq_messages.get(c, 0) for c in conversations),
                "turns_in_journal": sum(recorder.truth[c].turns_done for c in conversations),
                "upstream": upstream,
                "exactly_one_upstream": upstream["conversations_over_one"] == 0,
                "settle_s": settle_s,
                "behind_at_end": behind.get("behind", 0),
                "connected_at_end": behind.get("connected", 0),
                "recorder_errors": recorder.errors,
                "cpu_s_cluster_survivors": round(cpu, 2),
                "gateway_log": self._log_counts(),
            }
        )
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="300 viewers per phase, shorter phases: ~2-3 minutes")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ", ".join(PHASES))
    parser.add_argument("--viewers", type=int, help="viewers per phase (default 2,100; --quick 300)")
    parser.add_argument("--workers", type=int, default=2, help="load-client processes (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    plan = SoakPlan.quick() if args.quick else SoakPlan()
    if args.viewers:
        plan.viewers = args.viewers
    plan.workers = args.workers
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    log_dir = Path(tempfile.mkdtemp(prefix="hqgw-soak-"))
    started = time.monotonic()
    load_before = load_average()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    say(f"soak {plan.mode}: {plan.viewers} viewers per phase, {len(phases)} phases; logs in {log_dir}")
    results: list[dict[str, Any]] = []
    cluster = Cluster(log_dir, gateways=2, extra_env=GATEWAY_ENV)
    try:
        gateways = ", ".join(f"{g.index}: pid {g.pid} port {g.port} instance {g.instance}" for g in cluster.gateways)
        say(f"redis pid {cluster.redis.process.pid if cluster.redis.process else '?'}, gateways {gateways}")
        with SoakClient(plan.workers) as client:
            soak = Soak(plan, cluster, client, say)
            for name in phases:
                say(f"phase {name} …")
                try:
                    row = soak.phase(name)
                except Exception as exc:  # one broken phase must not lose the others
                    say(f"  FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                    client.close()
                    results.append({"phase": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                    continue
                results.append(row)
                say("  " + report.one_line(row))
    finally:
        cluster.stop()
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": plan.mode,
        "revision": revision(),
        "machine": {**machine(), "load_before": load_before, "load_after": load_average()},
        "plan": asdict(plan),
        "gateway_env": GATEWAY_ENV,
        "elapsed_s": round(time.monotonic() - started, 1),
        "phases": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=str)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M") + ("" if plan.mode == "default" else f"-{plan.mode}")
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    (args.out / "latest.md").write_text(report.markdown(data))
    say(f"done in {data['elapsed_s']:.0f} s → {args.out / 'latest.md'}")
    ok = all(not r.get("error") and r.get("lost_silently") == 0 and r.get("duplicated") == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
