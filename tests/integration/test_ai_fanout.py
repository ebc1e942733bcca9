"""AI-stream-aware fan-out: turn snapshots for late joiners, coalescing for slow viewers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import websockets

from gateway.protocols.sse import SseEvent, SseParser
from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import StartGateway, submit
from tests.servers import ServerProcess

N_FAST = 20


def reply_of(envelopes: list[dict[str, Any]]) -> str:
    return "".join(e["payload"]["text"] for e in envelopes if e["stage"] == "ASSISTANT_OUTPUT_DELTA")


def test_late_joiner_over_sse_gets_snapshot_then_exactly_the_rest(gateway: ServerProcess, conv: str) -> None:
    async def main() -> None:
        full = SseViewer(gateway.url, conv).start()
        await full.wait_connected()
        assert submit(gateway, conv, "long answer [deltas=200] [interval_ms=5]").status_code == 202
        await eventually(lambda: full.stages().count("ASSISTANT_OUTPUT_DELTA") >= 40, 10, "reply under way")
        late = SseViewer(gateway.url, conv).start(params={"snapshot": "turn"})
        await full.wait_for_stage("ENGINE_RETURN", timeout=20)
        await late.wait_for_stage("ENGINE_RETURN", timeout=20)
        snap_event = late.events[0]
        assert snap_event.event == "TURN_SNAPSHOT"
        snap = json.loads(snap_event.data)
        assert snap["auditId"] == int(snap_event.id) and snap["payload"]["running"] is True
        assert snap["payload"]["turn"] == 1 and snap["payload"]["userInput"].startswith("long answer")
        live = late.envelopes[1:]
        assert_dense([int(e.id) for e in late.events], first=snap["auditId"])  # snapshot seq, then the next ones
        assert snap["payload"]["reply"] + reply_of(live) == reply_of(full.envelopes)
        assert not set(late.seqs[1:]) & set(s for s in full.seqs if s <= snap["auditId"])  # no delta twice
        # After the turn: a new page still shows the completed reply, and REST returns the same snapshot.
        after = SseViewer(gateway.url, conv).start(params={"snapshot": "turn"})
        await after.wait_for_stage("TURN_SNAPSHOT")
        done = json.loads(after.events[0].data)["payload"]
        assert done["running"] is False and done["reply"] == reply_of(full.envelopes) and done["state"] == "COMPLETED"
        async with httpx.AsyncClient() as c:
            rest = (await c.get(f"{gateway.url}/api/v1/conversation/audit/{conv}/snapshot")).json()
        assert rest["payload"]["reply"] == done["reply"] and rest["auditId"] == full.seqs[-1]
        for v in (full, late, after):
            await v.stop()

    asyncio.run(main())


def test_late_joiner_over_stomp_snapshot_header(gateway: ServerProcess, conv: str) -> None:
    ws_url = gateway.url.replace("http://", "ws://") + "/ws-convengine"

    async def main() -> None:
        full = SseViewer(gateway.url, conv).start()
        await full.wait_connected()
        assert submit(gateway, conv, "stomp late [deltas=150] [interval_ms=5]").status_code == 202
        await eventually(lambda: full.stages().count("ASSISTANT_OUTPUT_DELTA") >= 30, 10, "reply under way")
        frames: list[tuple[dict[str, str], dict[str, Any]]] = []
        async with websockets.connect(ws_url, subprotocols=["v12.stomp"]) as ws:  # type: ignore[list-item]
            await ws.send("CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\x00")
            await ws.recv()
            await ws.send(f"SUBSCRIBE\nid:0\ndestination:/topic/convengine/audit/{conv}\nsnapshot:turn\n\n\x00")
            async with asyncio.timeout(20):
                while not frames or frames[-1][1]["stage"] != "ENGINE_RETURN":
                    for raw in str(await ws.recv()).split("\x00"):
                        if raw.startswith("MESSAGE"):
                            head, _, body = raw.partition("\n\n")
                            headers = dict(line.split(":", 1) for line in head.splitlines()[1:])
                            frames.append((headers, json.loads(body)))
        await full.wait_for_stage("ENGINE_RETURN")
        snap = frames[0][1]
        assert snap["stage"] == "TURN_SNAPSHOT" and int(frames[0][0]["seq"]) == snap["auditId"]
        seqs = [int(h["seq"]) for h, _ in frames]
        assert_dense(seqs, first=snap["auditId"])
        assert snap["payload"]["reply"] + reply_of([b for _, b in frames[1:]]) == reply_of(full.envelopes)
        await full.stop()

    asyncio.run(main())


class RawSseReader:
    """An SSE viewer on a bare socket: cheap enough to run 20 in the test process, or slow on purpose.

    HTTP/1.0 keeps the body free of chunked framing. ``pause_s`` > 0 with a tiny receive buffer is a
    viewer on a slow link that still reads.
    """

    def __init__(self, base_url: str, conv: str, chunk: int = 65536, pause_s: float = 0.0) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if pause_s:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        self.sock.sendall(f"GET /api/v1/conversation/stream/{conv} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        self.sock.setblocking(False)
        self.chunk, self.pause_s = chunk, pause_s
        self.events: list[SseEvent] = []
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event != "stale"]

    @property
    def seqs(self) -> list[int]:
        return [int(e.id) for e in self.events if e.id is not None]

    def start(self, until_stage: str, timeout: float) -> RawSseReader:
        self.task = asyncio.create_task(self.run(until_stage, timeout))
        return self

    async def run(self, until_stage: str, timeout: float) -> None:
        parser = SseParser()
        head = b""
        headers_done = False
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, self.chunk)
                if not data:
                    self.closed = True
                    return
                if not headers_done:
                    head += data
                    if b"\r\n\r\n" not in head:
                        continue
                    _, _, data = head.partition(b"\r\n\r\n")
                    headers_done = True
                self.events += parser.feed(data)
                if any(e.event == until_stage for e in self.events[-50:]):
                    return
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)


def test_slow_viewer_is_coalesced_fast_viewers_untouched(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    gw = start_gateway(
        simulator.url,
        GATEWAY_HUB_COALESCE_AFTER="48",
        GATEWAY_HUB_QUEUE_MAX_MESSAGES="400",
        GATEWAY_SOCKET_SNDBUF_BYTES="8192",
    )

    async def main() -> None:
        probe = SseViewer(gw.url, conv).start()
        await probe.wait_connected()
        fast = [RawSseReader(gw.url, conv).start("ENGINE_RETURN", 60) for _ in range(N_FAST)]
        slow = RawSseReader(gw.url, conv, chunk=1024, pause_s=0.05)
        await eventually(
            lambda: f'hqgw_viewers{{transport="sse"}} {N_FAST + 2}.0' in httpx.get(f"{gw.url}/metrics").text,
            5,
            "all viewers attached",
        )
        assert submit(gw, conv, "flood [deltas=600] [interval_ms=8] [tools=2]").status_code == 202
        await slow.run("ENGINE_RETURN", timeout=60)
        for v in fast:
            assert v.task is not None
            await v.task
        reference = fast[0]
        assert_dense(reference.seqs)
        for v in fast[1:]:
            assert v.seqs == reference.seqs  # every envelope, unmerged, in order
        assert all("coalesced" not in e["payload"]["_meta"] for e in reference.envelopes)
        got = [json.loads(e.data) for e in slow.events if e.event != "stale"]
        assert "stale" not in [e.event for e in slow.events] and not slow.closed  # never cut loose
        assert len(got) < len(reference.envelopes)  # fewer, larger frames
        assert reply_of(got) == reply_of(reference.envelopes)  # the exact full reply text
        non_delta = [e["stage"] for e in reference.envelopes if e["stage"] not in ("ASSISTANT_OUTPUT_DELTA", "VERBOSE")]
        assert [e["stage"] for e in got if e["stage"] not in ("ASSISTANT_OUTPUT_DELTA", "VERBOSE")] == non_delta
        assert any("coalesced" in e["payload"]["_meta"] for e in got)
        slow.sock.close()
        for v in fast:
            v.sock.close()
        await probe.stop()

    asyncio.run(main())


def test_viewer_that_never_reads_is_cut_loose_with_a_reason(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    gw = start_gateway(
        simulator.url,
        GATEWAY_HUB_COALESCE_AFTER="8",
        GATEWAY_HUB_QUEUE_MAX_BYTES="16384",
        GATEWAY_HUB_QUEUE_MAX_MESSAGES="30",
        GATEWAY_SOCKET_SNDBUF_BYTES="8192",
    )

    async def main() -> None:
        stuck = RawSseReader(gw.url, conv, pause_s=1)  # connected, never reads
        await eventually(lambda: 'hqgw_viewers{transport="sse"} 1.0' in httpx.get(f"{gw.url}/metrics").text, 5)
        fast = SseViewer(gw.url, conv, headers={}).start(params={"coalesce": "false"})
        await eventually(lambda: 'hqgw_viewers{transport="sse"} 2.0' in httpx.get(f"{gw.url}/metrics").text, 5)
        # Tool calls and results are never merged: enough of them overflow any coalescing.
        for turn in range(1, 5):
            assert submit(gw, conv, f"turn {turn} [deltas=50] [tools=30] [interval_ms=1]").status_code == 202
            await fast.wait_for_stage("ENGINE_RETURN", turn, timeout=30)
        assert_dense(fast.seqs)  # the reading viewer lost nothing
        await eventually(
            lambda: 'hqgw_viewer_disconnects_total{reason="slow"} 1.0' in httpx.get(f"{gw.url}/metrics").text,
            10,
            "the stuck viewer cut loose",
        )
        stuck.sock.close()
        await fast.stop()

    asyncio.run(main())
