"""Cluster mode at scale and under Redis faults: every viewer gets everything, or is told and resumes.

Redis is a real redis-server on a free port; viewers are real SSE and STOMP connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import websockets

from tests.clients import assert_dense, eventually
from tests.faults.test_cluster import cluster_env
from tests.integration.conftest import StartGateway, StartSimulator, sim_stats, submit
from tests.rawsse import RawSseViewer
from tests.redis_server import RedisServer
from tests.servers import ServerProcess


def viewers_of(gw: ServerProcess, conv: str, n: int, last_event_id: str | None = None) -> list[RawSseViewer]:
    parts = urlsplit(gw.url)
    assert parts.hostname is not None and parts.port is not None
    return [RawSseViewer(parts.hostname, parts.port, conv, last_event_id=last_event_id).start() for _ in range(n)]


async def all_attached(viewers: list[RawSseViewer], timeout: float = 30) -> None:
    # The first comment is written once the subscription is registered in the hub.
    await eventually(lambda: all(v.comments >= 1 or v.closed.is_set() for v in viewers), timeout, "viewers attached")


def test_a_small_redis_pool_serves_hundreds_of_viewers_joining_at_once(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    """Joins share Redis calls and wait for a pooled connection: none fails, none is left silent."""
    sim = start_simulator()
    env = cluster_env(redis_url, GATEWAY_REDIS_MAX_CONNECTIONS="4")
    gws = [start_gateway(sim.url, **env) for _ in range(2)]

    async def main() -> None:
        viewers = [v for gw in gws for v in viewers_of(gw, conv, 120)]
        await all_attached(viewers)
        assert not [v for v in viewers if v.closed.is_set()], "a viewer was closed while attaching"
        assert submit(gws[0], conv, "many viewers [deltas=40] [interval_ms=5]").status_code == 202
        await eventually(lambda: all("ENGINE_RETURN" in v.stages() for v in viewers), 60, "every viewer's turn")
        reference = viewers[0].seqs
        assert_dense(reference)
        for v in viewers:
            assert v.told() == [] and v.seqs == reference, "lost, duplicated or reordered at a viewer"
        assert sim_stats(sim)["stream_opens"][conv] == 1
        for v in viewers:
            await v.stop()

    asyncio.run(main())
    for gw in gws:
        assert "Too many connections" not in gw.log() and "Traceback" not in gw.log()


def test_viewers_attaching_while_redis_is_down_are_told(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer], conv: str
) -> None:
    redis = redis_factory()
    sim = start_simulator()
    gw = start_gateway(sim.url, **cluster_env(redis.url))
    redis.stop()

    async def main() -> None:
        (viewer,) = viewers_of(gw, conv, 1, last_event_id="41")
        await asyncio.wait_for(viewer.closed.wait(), 15)
        assert viewer.told() == [
            ("error", {"error": "journal_unavailable", "message": viewer.told()[0][1]["message"], "resumeFrom": 41})
        ]
        ws_url = gw.url.replace("http", "ws") + "/ws-convengine"
        async with websockets.connect(ws_url, subprotocols=[websockets.Subprotocol("v12.stomp")]) as ws:
            await ws.send("CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
            assert str(await ws.recv()).startswith("CONNECTED")
            await ws.send(f"SUBSCRIBE\nid:s1\ndestination:/topic/convengine/audit/{conv}\nsince-seq:7\n\n\x00")
            frame = str(await asyncio.wait_for(ws.recv(), 15))
            assert frame.startswith("ERROR\n")
            # STOMP 1.2 §Value Encoding: a colon in a header value travels as \c.
            assert "message:journal_unavailable\\c " in frame and "since-seq\\c7" in frame

    asyncio.run(main())


def test_a_long_redis_outage_tells_viewers_and_their_resume_gets_the_rest(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer], conv: str
) -> None:
    redis = redis_factory(persistent=True)
    sim = start_simulator()
    gw = start_gateway(sim.url, **cluster_env(redis.url, GATEWAY_REDIS_OUTAGE_NOTICE_S="1"))

    async def main() -> None:
        viewers = viewers_of(gw, conv, 3)
        await all_attached(viewers)
        assert submit(gw, conv, "outage [deltas=150] [interval_ms=20]").status_code == 202
        await eventually(lambda: all(len(v.seqs) >= 10 for v in viewers), 15, "turn under way")
        redis.kill()
        down_at = time.monotonic()
        await eventually(lambda: all(v.closed.is_set() for v in viewers), 15, "viewers told and closed")
        told_within = time.monotonic() - down_at
        redis.start()
        resumed = []
        for v in viewers:
            ((event, data),) = v.told()
            assert event == "error" and data["error"] == "journal_unavailable"
            assert data["resumeFrom"] == v.seqs[-1], "resumeFrom is the last seq the viewer got"
            resumed += viewers_of(gw, conv, 1, last_event_id=str(data["resumeFrom"]))
        await eventually(lambda: all("ENGINE_RETURN" in r.stages() for r in resumed), 40, "resumed to the end")
        for before, after in zip(viewers, resumed, strict=True):
            assert after.told() == []
            assert_dense(before.seqs + after.seqs)
        assert told_within < 10
        for v in resumed:
            await v.stop()

    asyncio.run(main())


def test_redis_losing_its_data_mid_turn_is_detected_told_and_resumed(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer], conv: str
) -> None:
    redis = redis_factory(persistent=False)
    sim = start_simulator()
    gws = [start_gateway(sim.url, **cluster_env(redis.url, GATEWAY_REDIS_OUTAGE_NOTICE_S="30")) for _ in range(2)]

    async def main() -> None:
        viewers = [v for gw in gws for v in viewers_of(gw, conv, 2)]
        await all_attached(viewers)
        assert submit(gws[0], conv, "data loss [deltas=200] [interval_ms=20]").status_code == 202
        await eventually(lambda: all(len(v.seqs) >= 10 for v in viewers), 15, "turn under way")
        redis.restart()  # no persistence: every key is gone
        await eventually(lambda: all(v.closed.is_set() for v in viewers), 20, "viewers told and closed")
        ready = [httpx.get(f"{gw.url}/readyz").json()["checks"]["redis"] for gw in gws]
        assert all(r["ok"] is False and r.get("dataLoss") is True for r in ready), ready
        resumed = []
        for gw, v in zip([g for g in gws for _ in range(2)], viewers, strict=True):
            ((event, data),) = v.told()
            assert (event, data["reason"], data["resumeFrom"]) == ("stale", "reset", v.seqs[-1])
            resumed += viewers_of(gw, conv, 1, last_event_id=str(data["resumeFrom"]))
        await eventually(lambda: all("ENGINE_RETURN" in r.stages() for r in resumed), 40, "resumed to the end")
        for before, after in zip(viewers, resumed, strict=True):
            # The resume says the journal no longer matches the cursor, then replays the new incarnation,
            # whose seqs are all above every seq handed out before: none is reused.
            assert after.told() and after.told()[0][0] == "stale"
            assert min(after.seqs) > max(before.seqs)
            assert_dense(after.seqs)
        assert all(r.seqs == resumed[0].seqs for r in resumed)
        for v in resumed:
            await v.stop()

    asyncio.run(main())


def test_a_viewer_whose_redis_call_waits_past_the_pool_timeout_is_told(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer]
) -> None:
    """A stalled Redis with every pooled connection busy: waiting viewers are told, not left hanging."""
    redis = redis_factory()
    sim = start_simulator()
    gw = start_gateway(sim.url, **cluster_env(redis.url, GATEWAY_REDIS_MAX_CONNECTIONS="2",
                                              GATEWAY_REDIS_POOL_TIMEOUT_S="0.3"))  # fmt: skip

    async def main() -> None:
        with socket.create_connection(("127.0.0.1", redis.port)) as admin:
            admin.sendall(b"CLIENT PAUSE 4000 ALL\r\n")
            assert admin.recv(64).startswith(b"+OK")
            # Distinct conversations: no two joins can share a call, so most must wait for a connection.
            viewers = [v for _ in range(8) for v in viewers_of(gw, str(uuid.uuid4()), 1, last_event_id="5")]
            await eventually(lambda: sum(v.closed.is_set() for v in viewers) >= 4, 15, "waiting viewers told")
        told = [v for v in viewers if v.closed.is_set()]
        for v in told:
            ((event, data),) = v.told()
            assert (event, data["error"], data["resumeFrom"]) == ("error", "journal_unavailable", 5)
        for v in viewers:
            await v.stop()

    asyncio.run(main())


def test_a_turn_that_cannot_be_journaled_is_answered_503_not_500(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_factory: Callable[..., RedisServer], conv: str
) -> None:
    redis = redis_factory()
    sim = start_simulator()
    # A long lease: the holder still believes its stream is live when the turn arrives.
    gw = start_gateway(sim.url, **cluster_env(redis.url, GATEWAY_REDIS_LEASE_TTL_MS="20000"))

    async def main() -> None:
        (viewer,) = viewers_of(gw, conv, 1)
        await all_attached([viewer])
        await eventually(lambda: "upstream live" in gw.log(), 10, "the holder's HQ stream is live")
        redis.kill()
        reply = submit(gw, conv, "never journaled [deltas=3]", idempotencyKey="k-1")
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "journal_unavailable" and reply.headers["Retry-After"] == "1"
        await viewer.stop()

    asyncio.run(main())
