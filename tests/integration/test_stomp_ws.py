"""STOMP over a raw WebSocket at /ws-convengine: stomp.py's WSStompConnection and a bare websockets client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import threading
import time
from typing import Any

import httpx
import stomp
import websockets

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import sim_stats, submit
from tests.servers import ServerProcess
from tests.waiting import wait_until


class Collector(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, str], Any]] = []
        self.errors: list[Any] = []
        self.receipts: list[str] = []
        self.lock = threading.Lock()

    def on_message(self, frame: Any) -> None:
        with self.lock:
            self.messages.append((frame.headers, json.loads(frame.body)))

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.append(frame.headers["receipt-id"])


def stomp_py_client(gw: ServerProcess) -> tuple[Any, Collector]:
    host, port = gw.url.removeprefix("http://").split(":")
    conn = stomp.WSStompConnection([(host, int(port))], ws_path="/ws-convengine", heartbeats=(2000, 2000))
    listener = Collector()
    conn.set_listener("c", listener)
    conn.connect(wait=True)
    return conn, listener


def test_stomp_py_ws_receives_every_envelope_over_one_upstream(
    gateway: ServerProcess, simulator: ServerProcess, conv: str
) -> None:
    clients = [stomp_py_client(gateway) for _ in range(3)]
    for i, (conn, listener) in enumerate(clients):
        conn.subscribe(f"/topic/convengine/audit/{conv}", id=f"sub-{i}", ack="auto", receipt=f"r-{i}")
        wait_until(lambda listener=listener, i=i: f"r-{i}" in listener.receipts, 10, what="subscribe receipt")
    assert submit(gateway, conv, "stomp turn [deltas=12] [tools=1]").status_code == 202
    for _, listener in clients:
        wait_until(lambda listener=listener: any(m[1]["stage"] == "ENGINE_RETURN" for m in listener.messages), 15,
                   what="turn")  # fmt: skip
    first = clients[0][1].messages
    seqs = [int(h["seq"]) for h, _ in first]
    assert_dense(seqs)
    for headers, body in first:
        assert headers["destination"] == f"/topic/convengine/audit/{conv}"
        assert headers["content-type"] == "application/json"
        assert headers["subscription"] == "sub-0"
        assert int(headers["seq"]) == (body["auditId"] or body["verbose"]["verboseId"])
    for _, listener in clients[1:]:
        assert [b for _, b in listener.messages] == [b for _, b in first]
    assert first[0][1]["stage"] == "USER_INPUT"
    assert sim_stats(simulator)["open_streams"][conv] == 1
    for conn, listener in clients:
        assert not listener.errors
        conn.disconnect()


def test_sse_and_stomp_viewers_share_one_upstream_and_one_cursor(
    gateway: ServerProcess, simulator: ServerProcess, conv: str
) -> None:
    conn, listener = stomp_py_client(gateway)
    conn.subscribe(f"/topic/convengine/audit/{conv}", id="s", receipt="ok")
    wait_until(lambda: "ok" in listener.receipts, 10, what="the receipt")

    async def main() -> None:
        viewer = SseViewer(gateway.url, conv).start()
        await viewer.wait_connected()
        assert submit(gateway, conv, "mixed [deltas=6]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN")
        await eventually(lambda: len(listener.messages) == len(viewer.events), 10, "stomp catches up")
        assert [int(h["seq"]) for h, _ in listener.messages] == viewer.seqs
        assert sim_stats(simulator)["stream_opens"][conv] == 1
        # A seq seen over SSE resumes over STOMP: one cursor for every transport.
        mid = viewer.seqs[3]
        conn2, l2 = stomp_py_client(gateway)
        conn2.subscribe(f"/topic/convengine/audit/{conv}", id="r", headers={"since-seq": str(mid)})
        await eventually(lambda: len(l2.messages) == len(viewer.seqs) - 4, 10, "resumed replay")
        assert [int(h["seq"]) for h, _ in l2.messages] == viewer.seqs[4:]
        conn2.disconnect()
        await viewer.stop()

    asyncio.run(main())
    conn.disconnect()


async def _raw(url: str, *frames: str, subprotocols: list[str] | None = None, expect: int = 1) -> list[str]:
    """Send raw frames; return the server's frames (several may share one WebSocket message)."""
    got: list[str] = []
    async with websockets.connect(url, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
        for f in frames:
            await ws.send(f)
        try:
            async with asyncio.timeout(5):
                while len(got) < expect:
                    got += [f + "\x00" for f in str(await ws.recv()).split("\x00") if f.strip("\n")]
        except websockets.ConnectionClosed:
            pass
    return got


def test_raw_websocket_subprotocols_errors_and_receipts(gateway: ServerProcess, conv: str) -> None:
    ws_url = gateway.url.replace("http://", "ws://") + "/ws-convengine"

    async def main() -> None:
        async with websockets.connect(ws_url, subprotocols=["v10.stomp", "v12.stomp"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "v12.stomp"
            await ws.send("CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\x00")
            connected = str(await ws.recv())
            assert (
                connected.startswith("CONNECTED\n") and "version:1.2" in connected and "server:hq-gateway" in connected
            )
        async with websockets.connect(ws_url) as ws:  # no subprotocol at all: still served
            assert ws.subprotocol is None
        connect = "CONNECT\naccept-version:1.1,1.2\nhost:x\n\n\x00"
        out = await _raw(ws_url, connect, "SUBSCRIBE\nid:1\ndestination:/queue/nope\nreceipt:9\n\n\x00", expect=2)
        assert out[1].startswith("ERROR\n") and "Unknown destination" in out[1] and "receipt-id:9" in out[1]
        out = await _raw(ws_url, connect, "SUBSCRIBE\nid:1\ndestination:/topic/convengine/audit/xyz\n\n\x00", expect=2)
        assert out[1].startswith("ERROR\n") and "UUID" in out[1]
        out = await _raw(ws_url, connect, f"SEND\ndestination:/topic/convengine/audit/{conv}\n\nhi\x00", expect=2)
        assert out[1].startswith("ERROR\n") and "SEND is not supported" in out[1]
        sub = f"SUBSCRIBE\nid:a\ndestination:/topic/convengine/audit/{conv}\nreceipt:r1\n\n\x00"
        out = await _raw(ws_url, connect + sub + "DISCONNECT\nreceipt:bye\n\n\x00", expect=3)
        assert out[1].startswith("RECEIPT\nreceipt-id:r1") and out[2].startswith("RECEIPT\nreceipt-id:bye")
        out = await _raw(ws_url, "SUBSCRIBE\nid:1\ndestination:/x\n\n\x00", expect=1)
        assert out[0].startswith("ERROR\n")  # frames before CONNECT

    asyncio.run(main())


def test_split_frames_heartbeats_and_dead_peer(simulator: ServerProcess, start_gateway: Any, conv: str) -> None:
    gw = start_gateway(simulator.url, GATEWAY_STOMP_HEARTBEAT_MS="100")
    ws_url = gw.url.replace("http://", "ws://") + "/ws-convengine"

    async def main() -> None:
        async with websockets.connect(ws_url, subprotocols=["v12.stomp"]) as ws:  # type: ignore[list-item]
            frame = "CONNECT\naccept-version:1.2\nhost:x\nheart-beat:100,100\n\n\x00"
            for i in range(0, len(frame), 7):  # one frame split across many WebSocket messages
                await ws.send(frame[i : i + 7])
            connected = str(await ws.recv())
            assert "heart-beat:100,100" in connected

            async def beat() -> None:
                while True:
                    await ws.send("\n")
                    await asyncio.sleep(0.05)

            beating = asyncio.create_task(beat())
            beats = 0
            async with asyncio.timeout(5):
                while beats < 5:  # heart-beats both ways keep the session alive
                    beats += str(await ws.recv()) == "\n"
            beating.cancel()
            # Now go silent: the server must call us dead after about 2 x 100 ms.
            started = time.monotonic()
            async with asyncio.timeout(5):
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and "heart-beat" in closed.rcvd.reason
            assert time.monotonic() - started < 2

    asyncio.run(main())


def test_connect_timeout(simulator: ServerProcess, start_gateway: Any) -> None:
    gw = start_gateway(simulator.url, GATEWAY_STOMP_CONNECT_TIMEOUT_S="0.3")
    ws_url = gw.url.replace("http://", "ws://") + "/ws-convengine"

    async def main() -> None:
        async with websockets.connect(ws_url) as ws:
            async with asyncio.timeout(5):
                error = str(await ws.recv())
            assert error.startswith("ERROR\n") and "no CONNECT frame in time" in error

    asyncio.run(main())


def _masked_text_frame(text: str) -> bytes:
    """One client→server WebSocket text frame (RFC 6455 §5.3: clients mask)."""
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    n = len(payload)
    header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _stuck_stomp_viewer(gw: ServerProcess, conv: str) -> socket.socket:
    """A STOMP viewer on a raw socket that subscribes, then never reads again."""
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws-convengine HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    sock.sendall(_masked_text_frame("CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n\n\x00"))
    sock.sendall(
        _masked_text_frame(f"SUBSCRIBE\nid:0\ndestination:/topic/convengine/audit/{conv}\ncoalesce:false\n\n\x00")
    )
    return sock


def test_slow_stomp_viewer_is_cut_loose_without_slowing_others(
    simulator: ServerProcess, start_gateway: Any, conv: str
) -> None:
    # Needs the server hooks even in the hooks-off run: dropping a stuck socket at once is the abort
    # hook, and keeping up with a 1 ms flood on a 50-message queue takes httptools (off runs h11).
    gw = start_gateway(simulator.url, GATEWAY_SOCKET_SNDBUF_BYTES="8192", GATEWAY_HUB_QUEUE_MAX_MESSAGES="50",
                       GATEWAY_SERVER_HOOKS="on")  # fmt: skip

    async def main() -> None:
        fast = SseViewer(gw.url, conv).start()
        await fast.wait_connected()
        stuck = _stuck_stomp_viewer(gw, conv)
        await eventually(lambda: 'hqgw_viewers{transport="websocket"} 1.0' in httpx.get(f"{gw.url}/metrics").text, 5)
        assert submit(gw, conv, "flood [deltas=600] [tools=10] [interval_ms=1]").status_code == 202
        await fast.wait_for_stage("ENGINE_RETURN", timeout=30)
        assert_dense(fast.seqs)  # the reading viewer lost nothing and was not held back
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'hqgw_viewer_disconnects_total{reason="slow"} 1.0' in metrics
        assert 'hqgw_viewers{transport="websocket"} 0.0' in metrics  # its subscription is gone
        stuck.settimeout(5)  # and its socket was dropped, not left open with full buffers
        with contextlib.suppress(ConnectionResetError):
            while stuck.recv(65536):
                pass
        stuck.close()
        await fast.stop()

    asyncio.run(main())


async def _stomp_viewers(url: str, conv: str, sub_ids: list[str]) -> list[Any]:
    """Raw websockets clients (they offer permessage-deflate), CONNECTed and SUBSCRIBEd with a receipt each."""
    sockets = []
    for sub_id in sub_ids:
        ws = await websockets.connect(url, subprotocols=["v12.stomp"])  # type: ignore[list-item]
        await ws.send("CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
        assert str(await ws.recv()).startswith("CONNECTED")
        await ws.send(f"SUBSCRIBE\nid:{sub_id}\ndestination:/topic/convengine/audit/{conv}\nreceipt:r\n\n\x00")
        assert str(await ws.recv()).startswith("RECEIPT")
        sockets.append(ws)
    return sockets


async def _messages_until_return(ws: Any) -> list[str]:
    frames: list[str] = []
    async with asyncio.timeout(15):
        while not frames or '"ENGINE_RETURN"' not in frames[-1]:
            frames += [f for f in str(await ws.recv()).split("\x00") if f.strip("\n")]
    return frames


def _header_of(frame: str, name: str) -> str:
    return next(line.split(":", 1)[1] for line in frame.split("\n\n", 1)[0].split("\n") if line.startswith(name + ":"))


def test_viewers_alike_get_the_same_bytes_and_deflate_is_opt_in(
    simulator: ServerProcess, start_gateway: Any, conv: str
) -> None:
    """Fan-out encodes an envelope once per subscription id; a client offering deflate gets plain frames."""
    gw = start_gateway(simulator.url)
    url = gw.url.replace("http://", "ws://") + "/ws-convengine"

    async def main() -> None:
        viewers = await _stomp_viewers(url, conv, ["sub-0", "sub-0", "sub-0", "mine"])
        for ws in viewers:
            assert ws.response.headers.get("sec-websocket-extensions") is None
        assert submit(gw, conv, "shared [deltas=20]").status_code == 202
        got = [await _messages_until_return(ws) for ws in viewers]
        for ws in viewers:
            await ws.close()
        assert got[0] == got[1] == got[2]  # byte for byte, message-ids included
        seqs = [int(_header_of(f, "seq")) for f in got[0]]
        assert_dense(seqs)
        assert [_header_of(f, "message-id") for f in got[0]] == [f"{s}-sub-0" for s in seqs]
        assert [_header_of(f, "message-id") for f in got[3]] == [f"{s}-mine" for s in seqs]
        assert [f.split("\n\n", 1)[1] for f in got[3]] == [f.split("\n\n", 1)[1] for f in got[0]]

    asyncio.run(main())


def test_websocket_compression_when_enabled(simulator: ServerProcess, start_gateway: Any, conv: str) -> None:
    gw = start_gateway(simulator.url, GATEWAY_WEBSOCKET_COMPRESSION="true")
    url = gw.url.replace("http://", "ws://") + "/ws-convengine"

    async def main() -> None:
        deflated, plain = await _stomp_viewers(url, conv, ["sub-0", "sub-0"])
        await plain.close()
        plain = await websockets.connect(url, compression=None)
        await plain.send("CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
        assert str(await plain.recv()).startswith("CONNECTED")
        await plain.send(f"SUBSCRIBE\nid:sub-0\ndestination:/topic/convengine/audit/{conv}\nreceipt:r\n\n\x00")
        assert str(await plain.recv()).startswith("RECEIPT")
        assert "permessage-deflate" in deflated.response.headers["sec-websocket-extensions"]
        assert plain.response.headers.get("sec-websocket-extensions") is None
        assert submit(gw, conv, "deflated [deltas=20]").status_code == 202
        got = [await _messages_until_return(ws) for ws in (deflated, plain)]
        for ws in (deflated, plain):
            await ws.close()
        assert got[0] == got[1]  # compressed per connection or shared plain: the same frames arrive
        assert_dense([int(_header_of(f, "seq")) for f in got[0]])

    asyncio.run(main())
