"""Metrics move by exactly what a turn did; label sets stay bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from typing import Any

import httpx
import websockets

from tests.clients import SseViewer
from tests.integration.conftest import StartGateway, sim_stats, submit
from tests.servers import ServerProcess
from tests.waiting import eventually


def scrape(gw: ServerProcess) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_counters_after_a_simulated_turn(simulator: ServerProcess, start_gateway: StartGateway, conv: str) -> None:
    gw = start_gateway(simulator.url)

    async def main() -> None:
        before = scrape(gw)
        viewers = [SseViewer(gw.url, conv).start() for _ in range(3)]
        for v in viewers:
            await v.wait_connected()
        during = scrape(gw)
        assert during['hqgw_viewers{transport="sse"}'] == 3
        assert submit(gw, conv, "count me [deltas=7] [tools=2]").status_code == 202
        for v in viewers:
            await v.wait_for_stage("ENGINE_RETURN")
        n = len(viewers[0].events)
        after = scrape(gw)

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        audit = sum(1 for e in viewers[0].envelopes if e["eventType"] == "AUDIT")
        verbose = n - audit
        assert delta('hqgw_envelopes_journaled_total{type="AUDIT"}') == audit
        assert delta('hqgw_envelopes_journaled_total{type="VERBOSE"}') == verbose
        assert delta('hqgw_envelopes_delivered_total{transport="sse"}') == 3 * n
        assert delta('hqgw_events_in_total{kind="text_delta"}') == 7
        assert delta('hqgw_events_in_total{kind="tool_call"}') == 2
        assert delta("hqgw_upstream_connects_total") == 1
        assert after["hqgw_upstream_connected"] == 1
        # One observation per live envelope and transport (not per viewer, not per batch).
        assert delta('hqgw_fanout_latency_seconds_count{transport="sse"}') == n
        assert delta('hqgw_fanout_latency_seconds_bucket{le="1.0",transport="sse"}') == n
        assert delta('hqgw_submissions_total{outcome="accepted"}') == 1
        assert after["hqgw_active_conversations"] == 1
        for v in viewers:
            await v.stop()
        text = httpx.get(f"{gw.url}/metrics").text
        assert conv not in text  # never a conversation id as a label
        labels = set(re.findall(r'(\w+)="', text))
        assert labels <= {"transport", "reason", "kind", "type", "outcome", "le", "quantile", "hook"}, labels

    asyncio.run(main())


def test_idle_viewers_that_vanish_are_detached_and_the_upstream_released(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    """Idle viewers hold no task of their own: a dropped socket must still detach them at once."""
    gw = start_gateway(simulator.url, GATEWAY_SSE_KEEPALIVE_S="60", GATEWAY_STOMP_HEARTBEAT_MS="0")
    host, port = gw.url.removeprefix("http://").split(":")

    async def main() -> None:
        sse = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /api/v1/conversation/stream/{conv} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert b" 200 " in await reader.readuntil(b"\r\n\r\n")
            sse.append(writer)
        stomp = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            ws = WsClient(reader, writer)
            await ws.handshake("/ws-convengine")
            await ws.send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
            assert (await ws.recv_text()).startswith("CONNECTED")
            await ws.send_text(f"SUBSCRIBE\nid:0\ndestination:/topic/convengine/audit/{conv}\nreceipt:r\n\n\x00")
            assert (await ws.recv_text()).startswith("RECEIPT")
            stomp.append(writer)
        await eventually_metric(gw, 'hqgw_viewers{transport="sse"}', 3)
        await eventually_metric(gw, 'hqgw_viewers{transport="websocket"}', 3)
        assert sim_stats(simulator)["open_streams"].get(conv) == 1
        for writer in sse + stomp:  # no goodbye: the TCP connection just goes
            writer.transport.abort()
        await eventually_metric(gw, 'hqgw_viewers{transport="sse"}', 0)
        await eventually_metric(gw, 'hqgw_viewers{transport="websocket"}', 0)
        await eventually_metric(gw, 'hqgw_connections{transport="websocket"}', 0)
        # linger is 1 s in the test gateways
        await eventually(lambda: not sim_stats(simulator)["open_streams"].get(conv), 10,
                         "the upstream closed after every viewer left")  # fmt: skip

    asyncio.run(main())


async def eventually_metric(gw: ServerProcess, name: str, value: float, timeout: float = 5.0) -> None:
    await eventually(lambda: scrape(gw).get(name, 0.0) == value, timeout, f"{name} == {value}", interval=0.05)


class WsClient:
    """Just enough of a WebSocket client on a raw socket to drop it without a close frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def handshake(self, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert b" 101 " in await self.reader.readuntil(b"\r\n\r\n")

    async def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        head = bytes((0x81, 0x80 | len(payload))) if len(payload) < 126 else b"\x81\xfe" + len(payload).to_bytes(2)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await self.writer.drain()

    async def recv_text(self) -> str:
        async with asyncio.timeout(5):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                size = int.from_bytes(await self.reader.readexactly(2))
            elif size == 127:
                size = int.from_bytes(await self.reader.readexactly(8))
            assert first & 0x0F == 1
            return (await self.reader.readexactly(size)).decode()


async def _stomp_viewer(url: str, conv: str, frames: list[str], path: str = "/ws-convengine", headers: str = "") -> Any:
    """A STOMP viewer over a real WebSocket (raw, or SockJS's websocket transport when ``path`` says so)."""
    sockjs = path != "/ws-convengine"
    ws = await websockets.connect(url.replace("http", "ws") + path, subprotocols=None if sockjs else
                                  [websockets.Subprotocol("v12.stomp")])  # fmt: skip

    def wrap(text: str) -> str:
        return json.dumps([text]) if sockjs else text

    if sockjs:
        assert await ws.recv() == "o"
    await ws.send(wrap("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00"))
    await ws.send(wrap(f"SUBSCRIBE\nid:0\ndestination:/topic/convengine/audit/{conv}\nreceipt:r\n{headers}\n\x00"))

    async def read() -> None:
        async for raw in ws:
            texts = json.loads(raw[1:]) if sockjs and raw.startswith("a") else [] if sockjs else [raw]
            frames.extend(t for t in texts if t.startswith("MESSAGE"))
            if any(t.startswith("RECEIPT") for t in texts):
                frames.append("RECEIPT")

    task = asyncio.create_task(read())
    await eventually(lambda: "RECEIPT" in frames, 5, "RECEIPT")
    frames.remove("RECEIPT")
    return ws, task


def test_user_scope_viewers_of_every_transport_are_shown_and_counted_alike(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    """One delivery path: a user-scope viewer skips diagnostic/accounting envelopes on every transport,
    and hqgw_envelopes_delivered_total counts what each was shown, never a hidden envelope."""
    gw = start_gateway(simulator.url)

    async def main() -> None:
        full = SseViewer(gw.url, conv).start()
        user = SseViewer(gw.url, conv).start(params={"scope": "user"})
        for v in (full, user):
            await v.wait_connected()
        raw_frames: list[str] = []
        sockjs_frames: list[str] = []
        raw = await _stomp_viewer(gw.url, conv, raw_frames, headers="scope:user\n")
        sockjs = await _stomp_viewer(gw.url, conv, sockjs_frames, "/ws-convengine/000/userab/websocket",
                                     headers="scope:user\n")  # fmt: skip
        before = scrape(gw)
        assert submit(gw, conv, "scoped [deltas=4] [tools=1]").status_code == 202
        for v in (full, user):
            await v.wait_for_stage("ENGINE_RETURN")
        shown = user.seqs
        assert len(shown) < len(full.seqs)  # the turn had diagnostic/accounting envelopes

        def stomp_seqs(frames: list[str]) -> list[int]:
            return [int(m.group(1)) for f in frames if (m := re.search(r"\nseq:(\d+)", f))]

        await eventually(lambda: stomp_seqs(raw_frames) == stomp_seqs(sockjs_frames) == shown, 5, "STOMP shown")
        after = scrape(gw)

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        assert delta('hqgw_envelopes_delivered_total{transport="sse"}') == len(full.seqs) + len(shown)
        assert delta('hqgw_envelopes_delivered_total{transport="websocket"}') == len(shown)
        assert delta('hqgw_envelopes_delivered_total{transport="sockjs-websocket"}') == len(shown)
        for transport in ("websocket", "sockjs-websocket"):  # only user viewers: hidden ones observed too
            assert delta(f'hqgw_fanout_latency_seconds_count{{transport="{transport}"}}') == len(full.seqs)
        for v in (full, user):
            await v.stop()
        for ws, task in (raw, sockjs):
            await ws.close()
            task.cancel()

    asyncio.run(main())


async def _xhr_streaming_viewer(url: str, conv: str, frames: list[str]) -> Any:
    """A STOMP viewer over SockJS xhr-streaming (no direct-write path: every batch goes through a task)."""
    base = f"{url}/ws-convengine/000/xhrstream/"
    client = httpx.AsyncClient(timeout=10)
    opened = asyncio.Event()

    async def read() -> None:
        async with client.stream("POST", base + "xhr_streaming") as response:
            async for line in response.aiter_lines():
                if line == "o":
                    opened.set()
                elif line.startswith("a"):
                    for text in json.loads(line[1:]):
                        frames.append("RECEIPT" if text.startswith("RECEIPT") else text)

    task = asyncio.create_task(read())
    await asyncio.wait_for(opened.wait(), 5)
    connect = "CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00"
    subscribe = f"SUBSCRIBE\nid:0\ndestination:/topic/convengine/audit/{conv}\nreceipt:r\n\n\x00"
    assert (await client.post(base + "xhr_send", content=json.dumps([connect, subscribe]))).status_code == 204
    await eventually(lambda: "RECEIPT" in frames, 5, "RECEIPT")
    frames[:] = [f for f in frames if f.startswith("MESSAGE")]
    return client, task


def test_every_transport_observes_each_live_envelope_once(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    """Fan-out latency: one observation per envelope per transport, idle (direct-write) viewers included;
    the upstream gauge follows the stream down after its linger; submissions count every outcome."""
    gw = start_gateway(simulator.url)

    async def main() -> None:
        before = scrape(gw)
        sse = [SseViewer(gw.url, conv).start() for _ in range(2)]
        for v in sse:
            await v.wait_connected()
        raw_frames: list[str] = []
        sockjs_frames: list[str] = []
        raw = await _stomp_viewer(gw.url, conv, raw_frames)
        sockjs = await _stomp_viewer(gw.url, conv, sockjs_frames, "/ws-convengine/000/abcdef/websocket")
        xhr_frames: list[str] = []
        xhr_client, xhr_task = await _xhr_streaming_viewer(gw.url, conv, xhr_frames)
        stomp_got = lambda k: len(raw_frames) == len(sockjs_frames) == len(xhr_frames) == k  # noqa: E731
        await eventually(lambda: scrape(gw).get("hqgw_upstream_connected") == 1, 5, "upstream connected")
        assert submit(gw, conv, "count me [deltas=5] [tools=1]").status_code == 202
        for v in sse:
            await v.wait_for_stage("ENGINE_RETURN")
        n = len(sse[0].events)
        await eventually(lambda: stomp_got(n), 5, "STOMP viewers got the turn")
        # A second, separate turn: viewers are idle in between, so it goes out on the direct path.
        assert submit(gw, conv, "again [deltas=3]").status_code == 202
        for v in sse:
            await v.wait_for_stage("ENGINE_RETURN", count=2)
        n = len(sse[0].events)
        await eventually(lambda: stomp_got(n), 5, "STOMP viewers got turn 2")
        # Outcomes other than accepted are counted too.
        bad = httpx.post(f"{gw.url}/api/v1/conversation/message", json={"conversationId": "nope", "message": "x"})
        assert bad.status_code == 400
        after = scrape(gw)

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        for transport in ("sse", "websocket", "sockjs-websocket", "xhr-streaming"):
            assert delta(f'hqgw_fanout_latency_seconds_count{{transport="{transport}"}}') == n, transport
            assert delta(f'hqgw_fanout_latency_seconds_bucket{{le="1.0",transport="{transport}"}}') == n, transport
        assert delta('hqgw_envelopes_delivered_total{transport="sse"}') == 2 * n
        assert delta('hqgw_envelopes_delivered_total{transport="websocket"}') == n
        assert delta('hqgw_envelopes_delivered_total{transport="sockjs-websocket"}') == n
        assert delta('hqgw_envelopes_delivered_total{transport="xhr-streaming"}') == n
        assert delta('hqgw_submissions_total{outcome="accepted"}') == 2
        assert delta('hqgw_submissions_total{outcome="bad_request"}') == 1
        assert after["hqgw_active_conversations"] == 1
        assert after["hqgw_upstream_connected"] == 1

        # A late viewer replays the whole journal: replayed envelopes are not fan-out latency.
        late = SseViewer(gw.url, conv).start(last_event_id="0")
        await eventually(lambda: len(late.events) == n, 5, "replay")
        assert (
            scrape(gw)['hqgw_fanout_latency_seconds_count{transport="sse"}']
            == after['hqgw_fanout_latency_seconds_count{transport="sse"}']
        )

        for v in [*sse, late]:
            await v.stop()
        for ws, task in (raw, sockjs):
            await ws.close()
            task.cancel()
        xhr_task.cancel()
        await xhr_client.aclose()
        # Everyone left: after the linger (1 s) the upstream closes and both gauges say so.
        await eventually_metric(gw, "hqgw_upstream_connected", 0)
        await eventually_metric(gw, "hqgw_active_conversations", 0)

    asyncio.run(main())
