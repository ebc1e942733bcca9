"""Cluster mode over a real redis-server: one upstream per conversation per cluster, failover, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import httpx

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import StartGateway, StartSimulator, sim_stats, submit
from tests.redis_server import RedisServer
from tests.servers import ServerProcess

TTL_MS = 1500


def cluster_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_LEASE_TTL_MS": str(TTL_MS), **extra}


def leading(gw: ServerProcess) -> bool:
    """True when this gateway holds an upstream open (the lease holder)."""
    try:
        text = httpx.get(f"{gw.url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.startswith("hqgw_upstream_connected ") and not line.endswith(" 0.0") for line in text.splitlines())


def test_three_gateways_one_upstream_identical_sequences(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    gws = [start_gateway(sim.url, **cluster_env(redis_url)) for _ in range(3)]

    async def main() -> None:
        viewers = [SseViewer(gw.url, conv).start() for gw in gws for _ in range(2)]
        for v in viewers:
            await v.wait_connected()
        await eventually(lambda: sum(leading(gw) for gw in gws) == 1, 10, "exactly one lease holder")
        assert submit(gws[1], conv, "cluster turn [deltas=25] [tools=2]").status_code == 202
        for v in viewers:
            await v.wait_for_stage("ENGINE_RETURN", timeout=20)
        reference = viewers[0]
        assert_dense(reference.seqs)
        assert reference.stages()[0] == "USER_INPUT"
        for v in viewers[1:]:
            assert [e.data for e in v.events] == [e.data for e in reference.events]
        stats = sim_stats(sim)
        assert stats["stream_opens"][conv] == 1 and stats["open_streams"][conv] == 1
        # A viewer resumes on another process with the seq it saw elsewhere.
        mid = reference.seqs[10]
        again = SseViewer(gws[2].url, conv).start(last_event_id=str(mid))
        await eventually(lambda: again.seqs[-1:] == reference.seqs[-1:], 10, "resume elsewhere")
        assert again.seqs == reference.seqs[11:]
        for v in [*viewers, again]:
            await v.stop()

    asyncio.run(main())


def test_sigkill_of_the_lease_holder_mid_turn_loses_nothing(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    gws = [start_gateway(sim.url, **cluster_env(redis_url)) for _ in range(2)]

    async def main() -> None:
        viewers = {gw.pid: SseViewer(gw.url, conv).start() for gw in gws}
        for v in viewers.values():
            await v.wait_connected()
        holder = await eventually(lambda: next((gw for gw in gws if leading(gw)), None), 10, "a lease holder")
        survivor = next(gw for gw in gws if gw is not holder)
        assert submit(survivor, conv, "failover [deltas=120] [interval_ms=15]").status_code == 202
        watcher = viewers[survivor.pid]
        await eventually(lambda: watcher.stages().count("ASSISTANT_OUTPUT_DELTA") >= 20, 10, "turn under way")
        killed_at = time.monotonic()
        holder.kill()  # SIGKILL: no lease release, no goodbye
        await eventually(lambda: leading(survivor), 10, "takeover")
        took = time.monotonic() - killed_at
        assert took < TTL_MS / 1000 * 2.5, f"takeover took {took:.2f}s"
        await watcher.wait_for_stage("ENGINE_RETURN", timeout=30)
        assert_dense(watcher.seqs)
        envs = watcher.envelopes
        ids = [int(e["payload"]["_meta"]["sourceEventId"]) for e in envs if e["payload"]["_meta"]["sourceEventId"]]
        assert ids == list(range(ids[0], ids[0] + len(ids))), "every HQ event exactly once"
        reply = "".join(e["payload"]["text"] for e in envs if e["stage"] == "ASSISTANT_OUTPUT_DELTA")
        assert reply == next(e["payload"]["text"] for e in envs if e["stage"] == "ASSISTANT_OUTPUT")
        assert sim_stats(sim)["open_streams"].get(conv) == 1
        for v in viewers.values():
            await v.stop()

    asyncio.run(main())


def test_restarted_gateway_resumes_from_the_stored_cursor(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    gw = start_gateway(sim.url, **cluster_env(redis_url))
    port = gw.url.rsplit(":", 1)[1]

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        assert submit(gw, conv, "before restart [deltas=10]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN")
        last = viewer.last_id
        await viewer.stop()
        gw.stop()
        # While no gateway runs, HQ keeps producing: a turn started elsewhere (the simulator's emit).
        for i in range(5):
            r = httpx.post(
                f"{sim.url}/_sim/conversations/{conv}/emit",
                json={"event": "status", "data": {"message": f"m{i}"}},
                headers={"Authorization": "Bearer hq_pat_test_secret_token_123"},
            )
            assert r.status_code < 300, r.text
        again = start_gateway(sim.url, port=port, **cluster_env(redis_url))
        resumed = SseViewer(again.url, conv).start(last_event_id=last)
        await eventually(lambda: len(resumed.events) >= 5, 10, "events emitted while down")
        assert [e["verbose"]["text"] for e in resumed.envelopes[:5]] == [f"m{i}" for i in range(5)]
        assert_dense([int(last or 0), *resumed.seqs])
        # The upstream resumed with Last-Event-ID: HQ did not replay the first turn.
        assert all(e["payload"]["_meta"]["turn"] >= 1 for e in resumed.envelopes)
        assert len(resumed.events) == 5
        await resumed.stop()

    asyncio.run(main())


def test_redis_restart_mid_stream_recovers(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer], conv: str
) -> None:
    redis = redis_factory(persistent=True)
    sim = start_simulator()
    # An outage shorter than the notice period is bridged without telling anyone (see the scale tests
    # for a longer one: viewers are told and resume).
    gw = start_gateway(sim.url, **cluster_env(redis.url, GATEWAY_REDIS_OUTAGE_NOTICE_S="30"))

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        assert submit(gw, conv, "redis outage [deltas=150] [interval_ms=15]").status_code == 202
        await eventually(lambda: viewer.stages().count("ASSISTANT_OUTPUT_DELTA") >= 15, 10, "under way")
        redis.kill()
        await eventually(lambda: httpx.get(f"{gw.url}/readyz").status_code == 503, 10, "readyz false")
        assert httpx.get(f"{gw.url}/readyz").json()["checks"]["redis"]["ok"] is False
        assert httpx.get(f"{gw.url}/healthz").status_code == 200  # alive, not crashed
        redis.start()
        await eventually(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 15, "readyz true again")
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=40)
        seqs = viewer.seqs
        if "stale" in viewer.stages():  # the viewer was cut during the outage: resume it like EventSource would
            raise AssertionError("viewer was cut loose during the outage")
        assert_dense(seqs)
        reply = "".join(e["payload"]["text"] for e in viewer.envelopes if e["stage"] == "ASSISTANT_OUTPUT_DELTA")
        assert reply == next(e["payload"]["text"] for e in viewer.envelopes if e["stage"] == "ASSISTANT_OUTPUT")
        await viewer.stop()

    asyncio.run(main())


def test_paused_holder_is_fenced_after_losing_its_lease(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    gws = [start_gateway(sim.url, **cluster_env(redis_url)) for _ in range(2)]

    async def main() -> None:
        viewers = {gw.pid: SseViewer(gw.url, conv).start() for gw in gws}
        for v in viewers.values():
            await v.wait_connected()
        holder = await eventually(lambda: next((gw for gw in gws if leading(gw)), None), 10, "a lease holder")
        other = next(gw for gw in gws if gw is not holder)
        assert submit(other, conv, "fenced [deltas=150] [interval_ms=15]").status_code == 202
        watcher = viewers[other.pid]
        await eventually(lambda: watcher.stages().count("ASSISTANT_OUTPUT_DELTA") >= 10, 10, "under way")
        os.kill(holder.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: leading(other), 10, "takeover while the holder sleeps")
        finally:
            os.kill(holder.pid, signal.SIGCONT)  # wakes with a stale view of the world
        await watcher.wait_for_stage("ENGINE_RETURN", timeout=30)
        # The woken process runs again (it answers), whatever it tries next is fenced.
        await eventually(lambda: httpx.get(f"{holder.url}/healthz").status_code == 200, 10, "the woken holder")
        # A later turn through the new holder is the marker that anything stale would have landed.
        assert submit(other, conv, "after the fence [deltas=3]").status_code == 202
        await watcher.wait_for_stage("ENGINE_RETURN", count=2, timeout=30)
        assert_dense(watcher.seqs)
        envs = watcher.envelopes
        ids = [int(e["payload"]["_meta"]["sourceEventId"]) for e in envs if e["payload"]["_meta"]["sourceEventId"]]
        assert len(ids) == len(set(ids)), "an event journaled twice"
        async with httpx.AsyncClient() as c:
            audit = (await c.get(f"{other.url}/api/v1/conversation/audit/{conv}", params={"limit": 1000})).json()
        assert [e.get("auditId") or e["verbose"]["verboseId"] for e in audit["items"]] == watcher.seqs
        for v in viewers.values():
            await v.stop()

    asyncio.run(main())


def test_clean_shutdown_releases_the_lease_for_an_immediate_takeover(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    gws = [start_gateway(sim.url, **cluster_env(redis_url, GATEWAY_REDIS_LEASE_TTL_MS="10000")) for _ in range(2)]

    async def main() -> None:
        viewers = [SseViewer(gw.url, conv).start() for gw in gws]
        for v in viewers:
            await v.wait_connected()
        holder = await eventually(lambda: next((gw for gw in gws if leading(gw)), None), 10, "a lease holder")
        survivor = next(gw for gw in gws if gw is not holder)
        holder.stop()  # SIGTERM: drains viewers, releases the lease
        stopped = time.monotonic()
        await eventually(lambda: leading(survivor), 5, "takeover")
        assert time.monotonic() - stopped < 3, "waited for the 10 s TTL instead of the released lease"
        for v in viewers:
            await v.stop()

    asyncio.run(main())


def test_late_joiner_snapshot_on_another_process(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    gws = [start_gateway(sim.url, **cluster_env(redis_url)) for _ in range(2)]

    async def main() -> None:
        full = SseViewer(gws[0].url, conv).start()
        await full.wait_connected()
        assert submit(gws[0], conv, "late elsewhere [deltas=150] [interval_ms=10]").status_code == 202
        await eventually(lambda: full.stages().count("ASSISTANT_OUTPUT_DELTA") >= 30, 10, "reply under way")
        late = SseViewer(gws[1].url, conv).start(params={"snapshot": "turn"})
        await full.wait_for_stage("ENGINE_RETURN", timeout=30)
        await late.wait_for_stage("ENGINE_RETURN", timeout=30)
        snap = late.envelopes[0]
        assert snap["stage"] == "TURN_SNAPSHOT" and snap["payload"]["running"] is True
        assert_dense(late.seqs, first=snap["auditId"])
        deltas = "".join(e["payload"]["text"] for e in late.envelopes[1:] if e["stage"] == "ASSISTANT_OUTPUT_DELTA")
        final = next(e for e in full.envelopes if e["stage"] == "ASSISTANT_OUTPUT")["payload"]["text"]
        assert snap["payload"]["reply"] + deltas == final
        await full.stop()
        await late.stop()

    asyncio.run(main())
