"""A WebSocket connection as a ``Pipe``: raw (one STOMP frame per message) or SockJS-framed (o, h, a, c)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.protocols import sockjs
from gateway.protocols.sockjs import CloseStatus
from gateway.transports.server import abort_of, send_text_nowait_of, write_frame_nowait_of, ws_text_frame

SEND_TIMEOUT_S = 10.0  # as Spring's sendTimeLimit: a peer that reads nothing this long is cut loose
# Codes a server may put in a WebSocket close frame (RFC 6455 §7.4, IANA registry, 3000-4999 apps).
_WIRE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def _wire_code(code: int) -> int:
    return code if code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999 else 1000


def _sockjs_ws_frame(message: bytes) -> bytes:
    return ws_text_frame(sockjs.message_frame([message.decode()]).encode())


class WebSocketPipe:
    """A WebSocket connection as a ``Pipe``; ``framed`` adds SockJS framing (o, h, a, c)."""

    def __init__(self, ws: WebSocket, *, framed: bool, clock: Callable[[], float]) -> None:
        self.ws = ws
        self.framed = framed
        self.closed = False
        self._finished = False
        self._done: asyncio.Future[None] | None = None  # made only when someone waits (shutdown)
        self._clock = clock
        self._lock = asyncio.Lock()  # heartbeats, app sends and close must not interleave
        self.last_write = clock()
        self._write_frame: Callable[[bytes], bool] | None = None  # set by wire_encoder

    def finish(self) -> None:
        """The connection's task is over (handler notified next)."""
        self._finished = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def wait_done(self) -> None:
        if not self._finished:
            if self._done is None:
                self._done = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._done)

    async def send(self, message: str) -> None:
        await self.send_many([message])

    async def send_many(self, messages: list[str]) -> None:
        if not messages or self.closed:
            return
        if self.framed:
            await self.write(sockjs.message_frame(messages))
        else:
            for message in messages:
                await self.write(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.close_with(CloseStatus(code, reason))

    async def close_with(self, status: CloseStatus, *, ws_code: int = 1000, frame: bool = True) -> None:
        """Send the ``c`` frame when framed (unless ``frame`` is False), then close the socket."""
        async with self._lock:
            if self.closed:
                return
            if self.framed and frame:
                await self._send_locked(sockjs.close_frame(status.code, status.reason))
                code, reason = ws_code, ""
            else:
                code, reason = _wire_code(status.code), status.reason.encode()[:123].decode(errors="ignore")
            self.closed = True
            with contextlib.suppress(TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await self.ws.close(code, reason)

    def send_nowait(self, message: str | bytes) -> bool:
        """Write one message synchronously if the socket takes it now (fan-out fast path), else False."""
        if self.closed or self._lock.locked():
            return False  # a write or close is in flight: keep order through the async path
        fast = send_text_nowait_of(self.ws.scope)
        if self.framed:
            message = sockjs.message_frame([message.decode() if isinstance(message, bytes) else message])
        if fast is None or not fast(message):
            return False
        self.last_write = self._clock()
        return True

    def wire_encoder(self) -> tuple[str, Callable[[bytes], bytes]] | None:
        """How one message becomes wire bytes shared by every such pipe (see ``write_wire_nowait``).

        A format name and the encoding, or None when this connection's frames are its own
        (permessage-deflate) or the server offers no raw write.
        """
        self._write_frame = write_frame_nowait_of(self.ws.scope)
        if self._write_frame is None:
            return None
        if self.framed:
            return "sockjs-websocket", _sockjs_ws_frame
        return "websocket", ws_text_frame

    def write_wire_nowait(self, wire: bytes) -> bool:
        """``send_nowait`` for bytes ``wire_encoder`` made: no per-connection encoding at all."""
        if self.closed or self._lock.locked():
            return False
        fast = self._write_frame
        if fast is None or not fast(wire):
            return False
        self.last_write = self._clock()
        return True

    def abort(self) -> None:
        """Hard-close the connection now, even while a write is blocked on a full socket."""
        self.closed = True
        hard_abort = abort_of(self.ws.scope)
        if hard_abort is not None:
            hard_abort()

    async def write(self, text: str) -> None:
        async with self._lock:
            await self._send_locked(text)

    async def _send_locked(self, text: str) -> None:
        if self.closed:
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.send_text(text)
        except (TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
            # Gone or not reading: drop further writes, and drop the socket (a graceful close would
            # wait for a peer that does not read); the read loop then ends.
            self.closed = True
            self.abort()
        self.last_write = self._clock()

    async def heartbeats(self, interval_s: float) -> None:
        """Send ``h`` whenever nothing was written for ``interval_s``."""
        while not self.closed:
            delay = self.last_write + interval_s - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await self.write(sockjs.heartbeat_frame())
