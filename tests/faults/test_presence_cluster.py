"""Presence and the admin API across two gateway processes on one real redis-server, including a SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis

from gateway.presence_redis import FULL_EVERY
from tests.clients import SseViewer, assert_dense, eventually
from tests.faults.test_cluster import leading
from tests.integration.conftest import StartGateway, StartSimulator, submit
from tests.integration.test_presence import (
    StompViewer,
    admin_list,
    admin_row,
    assert_told_by_admin,
    disconnect,
    metric,
    presence,
)
from tests.redis_server import RedisServer
from tests.servers import ServerProcess

INTERVAL_S, TTL_S = 0.2, 1.0


def presence_env(redis_url: str) -> dict[str, str]:
    return {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_LEASE_TTL_MS": "1500",
            "GATEWAY_PRESENCE_INTERVAL_S": str(INTERVAL_S), "GATEWAY_PRESENCE_TTL_S": str(TTL_S)}  # fmt: skip


class PresenceWrites:
    """Counts writes to one conversation's presence hash, from Redis keyspace notifications (no mock)."""

    def __init__(self, redis_url: str, conv: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.client.config_set("notify-keyspace-events", "Kh")
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"__keyspace@0__:hqgw:{{{conv}}}:presence")
        self.pubsub.get_message(timeout=1)  # the subscribe confirmation

    def count(self) -> int:
        n = 0
        while self.pubsub.get_message(timeout=0.2) is not None:
            n += 1
        return n

    def close(self) -> None:
        self.pubsub.close()
        self.client.config_set("notify-keyspace-events", "")  # the session's server, as other tests expect it
        self.client.close()


def identical_presence(gws: list[ServerProcess], conv: str, by_transport: dict[str, int]) -> bool:
    answers = [presence(gw, conv).json() for gw in gws]
    return all(a == answers[0] for a in answers) and answers[0]["byTransport"] == by_transport


def test_two_processes_share_presence_admin_list_and_disconnect(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    a, b = (start_gateway(sim.url, **presence_env(redis_url)) for _ in range(2))

    async def main() -> None:
        sse = [SseViewer(a.url, conv).start(), SseViewer(b.url, conv).start(), SseViewer(b.url, conv).start()]
        for v in sse:
            await v.wait_connected()
        stomp = [await StompViewer(a.url, conv).start(), await StompViewer(b.url, conv).start()]
        expected = {"sse": 3, "websocket": 2}
        await eventually(lambda: identical_presence([a, b], conv, expected), 5, "identical presence from a and b")
        body = presence(a, conv).json()
        assert body["viewers"] == 5 and len(body["subjects"]) == 5

        await eventually(lambda: leading(a) or leading(b), 10, "a lease holder")
        writes = PresenceWrites(redis_url, conv)
        assert submit(b, conv, "cluster presence [deltas=60] [tools=1]").status_code == 202
        for v in sse:
            await v.wait_for_stage("ENGINE_RETURN", timeout=15)
        for s in stomp:
            await eventually(lambda s=s: s.seqs[-1:] == sse[0].seqs[-1:], 5, "stomp viewers caught up")
        assert_dense(sse[0].seqs)
        # No per-delivery work: ~5 x 70 deliveries, and presence wrote nothing for them (a periodic full
        # rewrite of this conversation's two fields may fall inside the turn).
        during_turn = writes.count()
        writes.close()
        assert during_turn <= 2, f"{during_turn} presence writes during a turn"

        def rows() -> tuple[dict, dict] | None:
            # The list is as fresh as each process's last heartbeat (GATEWAY_PRESENCE_INTERVAL_S).
            ra, rb = admin_row(a, conv), admin_row(b, conv)
            done = all(r and r["viewers"] == 5 and r["turn"]["number"] == 1 and not r["turn"]["running"]
                       for r in (ra, rb))  # fmt: skip
            return (ra, rb) if done else None

        row_a, row_b = await eventually(rows, 5, "the conversation listed by both, turn over")
        for row in (row_a, row_b):
            assert row["viewers"] == 5 and row["byTransport"] == expected
            assert row["upstream"]["state"] == "live" and row["upstream"]["reconnects"] == 0
            assert row["journal"] == {"oldest": sse[0].seqs[0], "newest": sse[0].seqs[-1]}
            assert row["turn"]["number"] == 1 and isinstance(row["turn"]["ttftMs"], int)
        # The same lease holder named from either process (one upstream per cluster).
        assert row_a["upstream"]["holder"] == row_b["upstream"]["holder"] is not None
        await eventually(lambda: all(metric(gw, "hqgw_presence_viewers", transport="sse") == 3 for gw in (a, b)),
                         5, "cluster-wide totals in /metrics")  # fmt: skip
        assert metric(a, "hqgw_presence_processes") == 2

        # One DELETE on a: a's two viewers at once, b's three within a few seconds, each told why.
        started = time.monotonic()
        assert disconnect(a, conv).json() == {"disconnected": 2}
        for v in [*sse, *stomp]:
            await asyncio.wait_for(v.closed.wait(), 5)
        took = time.monotonic() - started
        print(f"cluster-wide disconnect: every viewer told within {took:.2f}s")
        assert took < 3, f"cluster-wide disconnect took {took:.2f}s"
        assert_told_by_admin(sse, stomp)
        await eventually(lambda: identical_presence([a, b], conv, {}), 5, "presence emptied everywhere")
        for v in sse:
            await v.stop()

    asyncio.run(main())


def test_sigkilled_process_viewers_leave_presence_within_the_ttl(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    sim = start_simulator()
    a, b = (start_gateway(sim.url, **presence_env(redis_url)) for _ in range(2))

    async def main() -> None:
        on_a = SseViewer(a.url, conv).start()
        on_b = [SseViewer(b.url, conv).start() for _ in range(2)]
        for v in [on_a, *on_b]:
            await v.wait_connected()
        stomp_b = await StompViewer(b.url, conv).start()
        await eventually(lambda: identical_presence([a, b], conv, {"sse": 3, "websocket": 1}), 5, "presence")
        await eventually(lambda: admin_row(a, conv) and admin_row(a, conv)["viewers"] == 4, 5, "listed")  # type: ignore[index]
        killed = time.monotonic()
        b.kill()  # SIGKILL: no goodbye, its Redis fields stay behind
        await eventually(lambda: presence(a, conv).json()["byTransport"] == {"sse": 1}, TTL_S + 3, "b's viewers gone")
        gone_after = time.monotonic() - killed
        print(f"SIGKILLed process's viewers gone from presence after {gone_after:.2f}s (TTL {TTL_S}s)")
        # The documented bound: GATEWAY_PRESENCE_TTL_S (plus slack for one poll on a busy machine).
        assert gone_after <= TTL_S + 1.0, f"dead process's viewers listed for {gone_after:.2f}s"
        row = admin_row(a, conv)
        assert row is not None and row["viewers"] == 1
        body = presence(a, conv).json()
        assert [s["transport"] for s in body["subjects"]] == ["sse"]
        await eventually(lambda: metric(a, "hqgw_presence_processes") == 1, 5, "one process left in /metrics")
        assert not on_a.closed.is_set()
        await on_a.stop()
        for v in on_b:
            await v.stop()
        await stomp_b.stop()

    asyncio.run(main())


def test_presence_says_when_redis_is_down_and_comes_back_after_a_restart_that_lost_everything(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer], conv: str
) -> None:
    store = redis_factory()  # not persistent: a restart comes back empty
    sim = start_simulator()
    gw = start_gateway(sim.url, **presence_env(store.url))

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        await eventually(lambda: presence(gw, conv).json()["viewers"] == 1, 5, "presence")
        store.kill()
        # Not a stale or empty answer: the caller is told the shared store is unreachable.
        for response in (presence(gw, conv), admin_list(gw)):
            assert response.status_code == 503 and response.json()["error"] == "unavailable", response.text
        store.start()
        recovered = time.monotonic()
        await eventually(lambda: presence(gw, conv).status_code == 200 and presence(gw, conv).json()["viewers"] == 1,
                         10, "presence rewritten after Redis came back empty")  # fmt: skip
        took = time.monotonic() - recovered
        print(f"presence back {took:.2f}s after Redis restarted empty")
        # Within a couple of heartbeats, not at the next periodic full rewrite (FULL_EVERY heartbeats).
        assert took < FULL_EVERY * INTERVAL_S / 2, f"presence took {took:.2f}s to come back"
        assert admin_row(gw, conv) is not None
        await viewer.stop()

    asyncio.run(main())
