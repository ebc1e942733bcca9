"""Upstream opens are bounded: SUBSCRIBE/UNSUBSCRIBE churn cannot open thousands of HQ streams."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import websockets

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import StartGateway, StartSimulator, sim_stats


async def recv_frame(ws: Any, timeout: float = 5.0) -> str:
    """The next STOMP frame that is not a heart-beat."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        text = message if isinstance(message, str) else message.decode()
        if text.strip("\r\n"):
            return text


def header(frame: str, name: str) -> str | None:
    for line in frame.split("\n\n", 1)[0].split("\n")[1:]:
        key, _, value = line.partition(":")
        if key == name:
            return value
    return None


def test_subscription_churn_is_refused_after_the_bound_and_others_keep_their_turn(
    start_simulator: StartSimulator, start_gateway: StartGateway, conv: str
) -> None:
    sim = start_simulator()
    gw = start_gateway(
        sim.url,
        GATEWAY_LIMITS_UPSTREAM_ACTIVATION_BURST="6",
        GATEWAY_LIMITS_UPSTREAM_ACTIVATIONS_PER_S="0.05",
        GATEWAY_HQ_LINGER_S="30",
    )
    churned = [str(uuid.uuid4()) for _ in range(40)]

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()  # another viewer, watching before the churn (1 activation)
        await viewer.wait_connected()
        await eventually(lambda: sim_stats(sim)["open_streams"].get(conv) == 1, 5, "the viewer's upstream")

        accepted, refusal = 0, None
        ws_url = gw.url.replace("http://", "ws://") + "/ws-convengine"
        async with websockets.connect(ws_url, subprotocols=["v12.stomp"]) as ws:  # type: ignore[list-item]
            await ws.send("CONNECT\naccept-version:1.2\nhost:gw\nheart-beat:0,0\n\n\0")
            assert (await recv_frame(ws)).startswith("CONNECTED")
            for i, churn in enumerate(churned):
                dest = f"/topic/convengine/audit/{churn}"
                await ws.send(f"SUBSCRIBE\nid:s{i}\ndestination:{dest}\nreceipt:r{i}\n\n\0")
                frame = await recv_frame(ws)
                if frame.startswith("ERROR"):
                    refusal = frame
                    break
                assert frame.startswith("RECEIPT") and header(frame, "receipt-id") == f"r{i}"
                accepted += 1
                await ws.send(f"UNSUBSCRIBE\nid:s{i}\n\n\0")
            assert refusal is not None, "40 new conversations in a burst were all opened"
            await asyncio.wait_for(ws.wait_closed(), 5)  # ERROR, then the session ends
        # 6 in the burst, one spent by the other viewer; the slow refill may add one during the churn.
        assert 5 <= accepted <= 6, accepted
        message = header(refusal, "message") or ""
        assert message.startswith("activation_rate_limited") and "GATEWAY_LIMITS_UPSTREAM_ACTIVATION" in message
        assert header(refusal, "receipt-id") == f"r{accepted}"

        # The same client address opening yet another conversation over SSE is refused too, with the limit named.
        async with (
            httpx.AsyncClient(timeout=5) as client,
            client.stream("GET", f"{gw.url}/api/v1/conversation/stream/{uuid.uuid4()}") as r,
        ):
            assert r.status_code == 429
            body = json.loads(await r.aread())
        assert body["error"] == "activation_rate_limited" and int(r.headers["retry-after"]) >= 1
        assert body["limit"] == "GATEWAY_LIMITS_UPSTREAM_ACTIVATIONS_PER_S"

        stats = sim_stats(sim)
        opened = sum(stats["stream_opens"].get(c, 0) for c in churned)
        assert opened <= accepted, f"{opened} HQ streams for {accepted} accepted subscriptions"
        # Held for an instant, they do not linger the configured 30 s.
        await eventually(lambda: sum(sim_stats(sim)["open_streams"].get(c, 0) for c in churned) == 0, 6,
                         "churned upstreams closed")  # fmt: skip

        # The other viewer's conversation still streams; its turn (no new upstream) is not refused.
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"conversationId": conv, "message": "still here [deltas=20] [tools=1]"}
            reply = await client.post(f"{gw.url}/api/v1/conversation/message", json=body)
        assert reply.status_code == 202, reply.text
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=15)
        assert_dense(viewer.seqs)
        stages = viewer.stages()
        assert stages[0] == "USER_INPUT" and stages.count("ASSISTANT_OUTPUT_DELTA") == 20
        assert stages[-1] == "ENGINE_RETURN" and "ASSISTANT_OUTPUT" in stages
        assert sim_stats(sim)["stream_opens"][conv] == 1
        await viewer.stop()

    asyncio.run(main())


def test_process_cap_makes_room_from_lingering_upstreams_then_refuses(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator()
    gw = start_gateway(sim.url, GATEWAY_LIMITS_MAX_UPSTREAMS="2", GATEWAY_HQ_LINGER_S="30")
    a, b, c = (str(uuid.uuid4()) for _ in range(3))

    async def main() -> None:
        viewer_a = SseViewer(gw.url, a).start()
        viewer_b = SseViewer(gw.url, b).start()
        await viewer_a.wait_connected()
        await viewer_b.wait_connected()
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"{gw.url}/api/v1/conversation/stream/{c}")
            assert r.status_code == 429 and r.json()["error"] == "too_many_upstreams"
            assert r.json()["limit"] == "GATEWAY_LIMITS_MAX_UPSTREAMS" and "retry-after" in r.headers
            refused = await client.post(f"{gw.url}/api/v1/conversation/message",
                                        json={"conversationId": c, "message": "hi"})  # fmt: skip
            assert refused.status_code == 429 and refused.json()["error"] == "too_many_upstreams"
        assert c not in sim_stats(sim)["stream_opens"]
        await viewer_b.stop()  # b now only lingers: the next newcomer takes its place

        hello = {"conversationId": c, "message": "hi [deltas=2]"}

        async def c_admitted() -> bool:
            async with httpx.AsyncClient(timeout=5) as client:
                reply = await client.post(f"{gw.url}/api/v1/conversation/message", json=hello)
            return reply.status_code == 202

        await eventually(c_admitted, 5, "c admitted once b's viewer left")
        await eventually(lambda: sim_stats(sim)["open_streams"].get(b, 0) == 0, 5, "lingering b closed for c")
        assert sim_stats(sim)["open_streams"].get(a) == 1
        await viewer_a.stop()

    asyncio.run(main())
