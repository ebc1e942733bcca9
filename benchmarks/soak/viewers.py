"""Soak viewers: one logical viewer = a user who keeps watching a conversation across reconnects.

Each connection is a lean asyncio protocol (STOMP over raw WebSocket, STOMP over a SockJS websocket
session, SSE) that reports to its ``SoakViewer``: every envelope's ``seq`` and receipt time, every
notice the server gave (SSE ``stale``/``error``, STOMP ERROR, a WebSocket/SockJS close with a reason)
and every connection that ended without one. After a notice or a drop the viewer resumes like a
real client: a new connection (to another gateway if its own is gone) with its last seq as
``since-seq`` / ``Last-Event-ID``. Coalescing is switched off so that every seq must arrive on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from array import array
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks import wire

STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
RESUME_ATTEMPTS = 40  # bounded: about a minute of retries at most
OPEN_TIMEOUT_S = 20.0
RELOAD = "reload"  # a notice the viewer gave itself: it left and came back with its cursor
DROPPED = "dropped"  # the connection ended without a word from the server


def now_ms() -> float:
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True)
class SoakSpec:
    """One logical viewer: ``kind`` stomp | sockjs | sse; ``ports`` the gateways, its own first."""

    vid: int
    kind: str
    conversation: str
    ports: tuple[int, ...]
    role: str = "initial"  # initial (opened before the first turn) | joiner (opened during traffic)
    rcvbuf: int = 0  # small: a viewer meant to stall fills its buffers fast
    since: int | None = None  # the first subscription's since-seq (0: the whole journal)
    host: str = "127.0.0.1"


class _Connection(asyncio.Protocol):
    """One TCP connection of a viewer; parses its protocol and reports to the viewer."""

    def __init__(self, viewer: SoakViewer, port: int, since: int | None) -> None:
        self.viewer = viewer
        self.port = port
        self.since = since
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended = False
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.start()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc or 'EOF'}"))
        self._end(None)

    def _end(self, notice: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        if self.transport is not None:
            self.transport.abort()
        self.viewer.connection_ended(self, notice)

    def abort(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.abort()

    def start(self) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError


class _Stomp(_Connection):
    sockjs = False

    def __init__(self, viewer: SoakViewer, port: int, since: int | None) -> None:
        super().__init__(viewer, port, since)
        self._upgraded = False
        self._reader = wire.WsReader()

    def start(self) -> None:
        assert self.transport is not None
        spec = self.viewer.spec
        path = "/ws-convengine"
        if self.sockjs:
            path = f"/ws-convengine/{spec.vid % 1000:03d}/{time.monotonic_ns() % 10**8:08d}/websocket"
        protocols = () if self.sockjs else STOMP_SUBPROTOCOLS
        self.transport.write(wire.ws_handshake(spec.host, self.port, path, protocols))

    def _send(self, command: str, headers: dict[str, str]) -> None:
        frame = wire.stomp_frame(command, headers)
        payload = orjson.dumps([frame.decode()]) if self.sockjs else frame
        assert self.transport is not None
        self.transport.write(wire.ws_frame(1, payload))

    def _connect(self) -> None:
        self._send("CONNECT", {"accept-version": "1.2", "host": "/", "heart-beat": "0,0"})

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        if not self._upgraded:
            self._buf += data
            head = wire.split_head(self._buf)
            if head is None:
                return
            status, raw = head
            if status != 101:
                self._refused(f"upgrade refused: {raw[:120]!r}")
                return
            self._upgraded = True
            data = bytes(self._buf)
            self._buf.clear()
            if not self.sockjs:
                self._connect()
        for opcode, payload in self._reader.feed(data):
            if self.ended:
                return
            if opcode in (1, 2):
                if self.sockjs:
                    self._sockjs(payload)
                else:
                    self._stomp(payload)
            elif opcode == 9:
                assert self.transport is not None
                self.transport.write(wire.ws_frame(10, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                reason = payload[2:200].decode(errors="replace")
                self._end(f"ws close {code} {reason}".strip() if reason else None)

    def _refused(self, text: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(text))
        self._end(None)

    def _sockjs(self, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"a":
            for message in orjson.loads(payload[1:]):
                self._stomp(message.encode())
                if self.ended:
                    return
        elif kind == b"o":
            self._connect()
        elif kind == b"c":
            self._end(f"sockjs close {payload[1:200].decode(errors='replace')}")

    def _stomp(self, payload: bytes) -> None:
        for frame in wire.stomp_frames(payload):
            if frame.startswith(b"MESSAGE"):
                seq = wire.stomp_header(frame, b"seq")
                stale = wire.stomp_header(frame, b"stale")
                if stale:  # DESIGN: a STOMP resume that is not exact says so on its first MESSAGE
                    self.viewer.told(f"STOMP stale {stale[:160].decode(errors='replace')}")
                self.viewer.envelope(int(seq) if seq else None, wire.stomp_body(frame))
            elif frame.startswith(b"CONNECTED"):
                headers = {
                    "id": "0",
                    "destination": f"/topic/convengine/audit/{self.viewer.spec.conversation}",
                    "ack": "auto",
                    "receipt": "sub-0",
                    "coalesce": "false",
                }
                if self.since is not None:
                    headers["since-seq"] = str(self.since)
                self._send("SUBSCRIBE", headers)
            elif frame.startswith(b"RECEIPT"):
                if not self.ready.done():
                    self.ready.set_result(None)
            elif frame.startswith(b"ERROR"):
                message = (wire.stomp_header(frame, b"message") or b"").decode(errors="replace")
                if not self.ready.done():
                    self._refused(f"STOMP ERROR before ready: {message}")
                    return
                self._end(f"STOMP ERROR {message}"[:200])
                return


class _SockJs(_Stomp):
    sockjs = True


class _Sse(_Connection):
    def __init__(self, viewer: SoakViewer, port: int, since: int | None) -> None:
        super().__init__(viewer, port, since)
        self._body: wire.ChunkedReader | None = None

    def start(self) -> None:
        assert self.transport is not None
        spec = self.viewer.spec
        path = f"/api/v1/conversation/stream/{spec.conversation}?coalesce=false"
        if self.since is not None:
            path += f"&since_seq={self.since}"
        self.transport.write(wire.http_get(spec.host, self.port, path))

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        if self._body is None:
            self._buf += data
            head = wire.split_head(self._buf)
            if head is None:
                return
            status, raw = head
            if status != 200:
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"SSE refused: {raw[:120]!r}"))
                self._end(None)
                return
            self._body = wire.ChunkedReader(b"transfer-encoding: chunked" in raw.lower())
            data = bytes(self._buf)
            self._buf.clear()
        text = self._body.feed(data)
        if not text:
            return
        if not self.ready.done():
            self.ready.set_result(None)
        for frame in wire.take_sse_frames(self._buf, text):
            self._event(frame)
            if self.ended:
                return

    def _event(self, frame: bytes) -> None:
        seq: int | None = None
        data = b""
        event = b""
        for line in frame.split(b"\n"):
            if line.startswith(b"id:"):
                seq = int(line[3:])
            elif line.startswith(b"data:"):
                data = line[5:]
            elif line.startswith(b"event:"):
                event = line[6:].strip()
        if event == b"error":
            self._end(f"SSE error {data[:160].decode(errors='replace')}")
        elif event == b"stale":
            # A resume point the journal could not honour: told, and the stream goes on (or closes).
            self.viewer.told(f"SSE stale {data[:160].decode(errors='replace')}")
        else:  # the gateway names each event after its stage
            self.viewer.envelope(seq, data)


CONNECTIONS: dict[str, type[_Connection]] = {"stomp": _Stomp, "sockjs": _SockJs, "sse": _Sse}


class SoakViewer:
    """A logical viewer: its receipts, the notices it got, and its resumes, across connections."""

    def __init__(self, spec: SoakSpec, dead_ports: set[int]) -> None:
        self.spec = spec
        self.seqs = array("q")
        self.rx_ms = array("d")
        self.notices: list[tuple[float, str]] = []  # (time ms, what the server said / "dropped")
        self.connected_ms: list[float] = []  # when each connection became ready (subscribed)
        self.resumes = 0
        self.resume_failures = 0
        self.left_at_seq: int | None = None  # left on purpose: expectations end here
        self.started_ms = now_ms()
        self.no_seq = 0  # envelopes without a seq (snapshot frames)
        self.last_seq: int | None = None
        self.stalled_until = 0.0
        self.gave_up = False
        self._conn: _Connection | None = None
        self._dead_ports = dead_ports
        self._resuming: asyncio.Task[None] | None = None
        self._closed = False

    # -- called by connections ----------------------------------------------------------

    def envelope(self, seq: int | None, body: bytes) -> None:
        if seq is None:
            self.no_seq += 1
            return
        self.seqs.append(seq)
        self.rx_ms.append(now_ms())
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq

    def told(self, what: str) -> None:
        self.notices.append((now_ms(), what))

    def connection_ended(self, conn: _Connection, notice: str | None) -> None:
        if conn is not self._conn or self._closed:
            return
        ready = conn.ready
        if not ready.done() or ready.cancelled() or ready.exception() is not None:
            return  # a failed open: the opener retries or reports it
        self._conn = None
        self.notices.append((now_ms(), notice or DROPPED))
        self._resuming = asyncio.get_running_loop().create_task(self._resume(0.2))

    # -- driven by the worker -------------------------------------------------------------

    async def open(self) -> None:
        await self._connect(self.spec.ports[0], self.spec.since)

    async def _connect(self, port: int, since: int | None) -> None:
        loop = asyncio.get_running_loop()
        conn = CONNECTIONS[self.spec.kind](self, port, since)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.spec.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.spec.rcvbuf)
        self._conn = conn
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                await loop.sock_connect(sock, (self.spec.host, port))
                await loop.create_connection(lambda: conn, sock=sock)
                await conn.ready
            self.connected_ms.append(now_ms())
        except BaseException:
            if self._conn is conn:
                self._conn = None
            conn.abort()
            sock.close()
            raise

    async def _resume(self, delay: float) -> None:
        """Reconnect from the last seq received, own gateway first, bounded retries."""
        ports = self.spec.ports
        for attempt in range(RESUME_ATTEMPTS):
            await asyncio.sleep(min(2.0, delay * (1.5**attempt)))
            if self._closed:
                return
            alive = [p for p in ports if p not in self._dead_ports] or list(ports)
            port = alive[attempt % len(alive)]
            try:
                await self._connect(port, self.last_seq if self.last_seq is not None else 0)
            except (OSError, TimeoutError, ConnectionError):
                self.resume_failures += 1
                continue
            self.resumes += 1
            return
        self.gave_up = True

    async def leave_and_resume(self, pause_s: float) -> None:
        """A user reloading the page: close, wait, come back with the cursor (not a notice: own choice)."""
        if self._conn is None or (self._resuming is not None and not self._resuming.done()):
            return
        conn, self._conn = self._conn, None
        conn.abort()
        self.notices.append((now_ms(), RELOAD))
        self._resuming = asyncio.get_running_loop().create_task(self._resume(pause_s))

    def leave(self) -> None:
        """Stop watching for good: expectations end at the last seq received."""
        self.left_at_seq = self.last_seq if self.last_seq is not None else 0
        self.close()

    def stall(self, seconds: float) -> None:
        """Stop reading (the kernel buffers fill, then the gateway's queue), resume after ``seconds``."""
        conn = self._conn
        if conn is None or conn.transport is None:
            return
        conn.transport.pause_reading()
        self.stalled_until = now_ms() + seconds * 1000

        def resume() -> None:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.resume_reading()

        asyncio.get_running_loop().call_later(seconds, resume)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.ready.done() and not self._conn.ended

    def close(self) -> None:
        self._closed = True
        if self._resuming is not None:
            self._resuming.cancel()
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    def record(self) -> dict[str, Any]:
        return {
            "vid": self.spec.vid,
            "kind": self.spec.kind,
            "conversation": self.spec.conversation,
            "port": self.spec.ports[0],
            "role": self.spec.role,
            "since": self.spec.since,
            "stalled": self.stalled_until > 0,
            "seqs": self.seqs.tobytes(),
            "rx_ms": self.rx_ms.tobytes(),
            "notices": self.notices,
            "connected_ms": self.connected_ms,
            "resumes": self.resumes,
            "resume_failures": self.resume_failures,
            "left_at_seq": self.left_at_seq,
            "started_ms": self.started_ms,
            "no_seq": self.no_seq,
            "gave_up": self.gave_up,
            "connected": self.connected,
        }


async def close_quietly(viewers: list[SoakViewer]) -> None:
    for viewer in viewers:
        with contextlib.suppress(Exception):
            viewer.close()
    await asyncio.sleep(0.1)
