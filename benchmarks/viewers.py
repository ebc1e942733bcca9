"""Lean viewers as asyncio protocols: STOMP over raw WebSocket, STOMP over SockJS-websocket, and SSE.

Each viewer records, per received envelope, latency = receipt time - the ``emitted_at_ms`` the
simulator stamped into the event (same machine, same clock), and checks its ``seq`` for gaps and
duplicates. A viewer may read at a throttled rate (a slow mobile link): a small receive buffer and a
token bucket that pauses reading.
"""

from __future__ import annotations

import asyncio
import socket
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks import wire

STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
# Gateway and baselines alike name the HQ event in payload._meta: the paced deltas, not the turn's closing burst.
_DELTA = b'"sourceEvent":"text_delta"'


@dataclass(frozen=True, slots=True)
class ViewerSpec:
    """One viewer to open: ``kind`` is stomp | sockjs | sse; ``path`` the URL path; ``destination`` for STOMP."""

    kind: str
    host: str
    port: int
    path: str
    group: str = "main"
    destination: str = ""
    login: str = ""
    passcode: str = ""
    vhost: str = "/"
    subscribe_headers: tuple[tuple[str, str], ...] = ()
    rcvbuf: int = 0  # SO_RCVBUF before connecting (0: OS default)
    rate_bps: float = 0.0  # throttled reading, bytes per second (0: read as fast as possible)


@dataclass(slots=True)
class GroupStats:
    """What one group of viewers received since the last reset."""

    latencies: array = field(default_factory=lambda: array("d"))
    delta_latencies: array = field(default_factory=lambda: array("d"))  # reply-text deltas only: steady state
    messages: int = 0
    wire_bytes: int = 0
    gaps: int = 0  # missing seqs
    duplicates: int = 0
    stale: int = 0  # ERROR frames / stale events: cut loose by the server
    closed: int = 0  # connections that ended unexpectedly
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text[:300])

    def as_dict(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies.tobytes(),
            "delta_latencies": self.delta_latencies.tobytes(),
            "messages": self.messages,
            "wire_bytes": self.wire_bytes,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "stale": self.stale,
            "closed": self.closed,
            "errors": list(self.errors),
        }


class Viewer(asyncio.Protocol):
    """Common part: connection, throttling, seq bookkeeping; subclasses parse their protocol."""

    def __init__(self, spec: ViewerSpec, stats: GroupStats) -> None:
        self.spec = spec
        self.stats = stats
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.last_seq = 0
        self.last_rx_ms = 0.0
        self.last_latency_ms = 0.0
        self.frames = 0
        self.bytes = 0
        self.closing = False
        self._buf = bytearray()
        self._tokens = 0.0
        self._refilled = 0.0

    # -- connection ------------------------------------------------------------------------

    async def open(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.spec.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.spec.rcvbuf)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (self.spec.host, self.spec.port))
                await loop.create_connection(lambda: self, sock=sock)
                await self.ready
        except BaseException:
            sock.close()
            if self.transport is not None:
                self.transport.abort()
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports do not subclass asyncio's
        self._refilled = time.monotonic()
        self._tokens = self.spec.rate_bps / 10 if self.spec.rate_bps else 0.0
        self.start()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc or 'EOF'}"))
        elif not self.closing:
            self.stats.closed += 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def fail(self, text: str) -> None:
        self.stats.error(text)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(text))
        self.close()

    def data_received(self, data: bytes) -> None:
        rate = self.spec.rate_bps
        if rate:
            self._throttle(len(data), rate)
        self.bytes += len(data)
        self.stats.wire_bytes += len(data)
        self.received(data, time.time() * 1000.0)

    def _throttle(self, size: int, rate: float) -> None:
        now = time.monotonic()
        self._tokens = min(rate / 10, self._tokens + (now - self._refilled) * rate) - size
        self._refilled = now
        if self._tokens < 0 and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(-self._tokens / rate, self._resume)

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- measurement -----------------------------------------------------------------------

    def record(self, seq: int | None, body: bytes, now_ms: float) -> None:
        stats = self.stats
        stats.messages += 1
        self.frames += 1
        emitted = wire.emitted_at_ms(body)
        if emitted is not None:
            latency = now_ms - emitted
            stats.latencies.append(latency)
            if _DELTA in body:
                stats.delta_latencies.append(latency)
            self.last_latency_ms = latency
        self.last_rx_ms = now_ms
        if seq is None:
            return
        last = self.last_seq
        if last:
            if seq <= last:
                stats.duplicates += 1
                return
            first = wire.coalesced_from(body) if b'"coalesced"' in body else None
            start = first if first is not None else seq
            if start > last + 1:
                stats.gaps += start - last - 1
        self.last_seq = seq

    # -- protocol hooks ----------------------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def received(self, data: bytes, now_ms: float) -> None:
        raise NotImplementedError


class StompViewer(Viewer):
    """STOMP 1.2 over a raw WebSocket (``sockjs=False``) or a SockJS websocket session (``sockjs=True``)."""

    sockjs = False

    def __init__(self, spec: ViewerSpec, stats: GroupStats) -> None:
        super().__init__(spec, stats)
        self._upgraded = False
        self._reader = wire.WsReader()

    def start(self) -> None:
        assert self.transport is not None
        protocols = () if self.sockjs else STOMP_SUBPROTOCOLS
        self.transport.write(wire.ws_handshake(self.spec.host, self.spec.port, self.spec.path, protocols))

    def send_stomp(self, command: str, headers: dict[str, str]) -> None:
        frame = wire.stomp_frame(command, headers)
        payload = orjson.dumps([frame.decode()]) if self.sockjs else frame
        assert self.transport is not None
        self.transport.write(wire.ws_frame(1, payload))

    def connect_stomp(self) -> None:
        headers = {"accept-version": "1.2,1.1,1.0", "host": self.spec.vhost, "heart-beat": "0,0"}
        if self.spec.login:
            headers["login"] = self.spec.login
            headers["passcode"] = self.spec.passcode
        self.send_stomp("CONNECT", headers)

    def received(self, data: bytes, now_ms: float) -> None:
        if not self._upgraded:
            self._buf += data
            head = wire.split_head(self._buf)
            if head is None:
                return
            status, raw = head
            if status != 101:
                self.fail(f"websocket upgrade refused: {raw[:200]!r}")
                return
            self._upgraded = True
            data = bytes(self._buf)
            self._buf.clear()
            if not self.sockjs:
                self.connect_stomp()
        for opcode, payload in self._reader.feed(data):
            if opcode in (1, 2):
                if self.sockjs:
                    self._sockjs_message(payload, now_ms)
                else:
                    self._stomp_message(payload, now_ms)
            elif opcode == 9:  # ping → pong
                assert self.transport is not None
                self.transport.write(wire.ws_frame(10, payload))
            elif opcode == 8:
                if not self.closing and self.ready.done():
                    self.stats.error(f"server closed the websocket: {payload[2:200]!r}")
                self.close()

    def _sockjs_message(self, payload: bytes, now_ms: float) -> None:
        kind = payload[:1]
        if kind == b"a":
            for message in orjson.loads(payload[1:]):
                self._stomp_message(message.encode(), now_ms)
        elif kind == b"o":
            self.connect_stomp()
        elif kind == b"c":
            if self.ready.done():
                self.stats.error(f"sockjs close frame: {payload[:200]!r}")
            self.close()

    def _stomp_message(self, payload: bytes, now_ms: float) -> None:
        for frame in wire.stomp_frames(payload):
            if frame.startswith(b"MESSAGE"):
                seq = wire.stomp_header(frame, b"seq")
                self.record(int(seq) if seq else None, wire.stomp_body(frame), now_ms)
            elif frame.startswith(b"CONNECTED"):
                headers = {"id": "0", "destination": self.spec.destination, "ack": "auto", "receipt": "sub-0"}
                headers.update(self.spec.subscribe_headers)
                self.send_stomp("SUBSCRIBE", headers)
            elif frame.startswith(b"RECEIPT"):
                if not self.ready.done():
                    self.ready.set_result(None)
            elif frame.startswith(b"ERROR"):
                message = wire.stomp_header(frame, b"message") or b""
                if self.ready.done():
                    self.stats.stale += 1
                self.fail(f"STOMP ERROR: {message.decode(errors='replace')}")


class SockJsViewer(StompViewer):
    sockjs = True


class SseViewer(Viewer):
    """``GET`` an SSE stream over HTTP/1.1 (chunked or not); ready at the first body byte (a comment)."""

    def __init__(self, spec: ViewerSpec, stats: GroupStats) -> None:
        super().__init__(spec, stats)
        self._body: wire.ChunkedReader | None = None

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(wire.http_get(self.spec.host, self.spec.port, self.spec.path))

    def received(self, data: bytes, now_ms: float) -> None:
        if self._body is None:
            self._buf += data
            head = wire.split_head(self._buf)
            if head is None:
                return
            status, raw = head
            if status != 200:
                self.fail(f"SSE refused: {raw[:200]!r}")
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
            self._event(frame, now_ms)

    def _event(self, frame: bytes, now_ms: float) -> None:
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
        if event in (b"stale", b"error"):
            self.stats.stale += 1
            self.stats.error(f"SSE {event.decode()}: {data[:200]!r}")
            return
        self.record(seq, data, now_ms)


VIEWERS: dict[str, type[Viewer]] = {"stomp": StompViewer, "sockjs": SockJsViewer, "sse": SseViewer}
