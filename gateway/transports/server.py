"""uvicorn protocol classes that let the gateway hard-close a connection (scope extension ``hqgw.abort``).

A peer that stops reading is never done with: asyncio's ``transport.close()`` waits for the send
buffer to drain, so a viewer cut loose for being stuck would keep its socket and buffers until it
goes away. ``transport.abort()`` drops them at once; ASGI has no such verb, so the protocols put it
in the scope's extensions. Everything works without it (then the socket lingers, bounded).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

ABORT = "hqgw.abort"
SEND_TEXT_NOWAIT = "hqgw.send_text_nowait"
WRITE_FRAME_NOWAIT = "hqgw.write_frame_nowait"
PLAIN_FRAMES = "hqgw.plain_frames"
WRITE_BODY_NOWAIT = "hqgw.write_body_nowait"
ON_DISCONNECT = "hqgw.on_disconnect"


class AbortableHttpProtocol(HttpToolsProtocol):
    """httptools protocol whose request scopes carry the transport's abort."""

    # These hooks lean on uvicorn internals (scope, cycle, transport): if a uvicorn release changes
    # them, the hooks switch themselves off and the gateway falls back to plain ASGI.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._on_lost: list[Callable[[], None]] | None = None
        super().__init__(*args, **kwargs)
        if isinstance(getattr(self, "pipeline", None), deque) and not self.pipeline:
            self.pipeline = cast(Any, _LeanPipeline())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        flow = getattr(self, "flow", None)
        event = getattr(flow, "_is_writable_event", None)
        if isinstance(event, asyncio.Event):
            flow._is_writable_event = _LeanEvent.like(event)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        callbacks, self._on_lost = self._on_lost, None
        super().connection_lost(exc)
        for callback in callbacks or ():
            callback()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        with suppress(AttributeError, TypeError):
            extensions: dict[str, Any] = {ABORT: self.transport.abort, ON_DISCONNECT: self._watch_disconnect}
            self.scope["extensions"] = cast(Any, extensions)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        with suppress(AttributeError, TypeError):
            cycle = getattr(self, "cycle", None)
            extensions = cast(Any, self.scope.get("extensions"))
            if cycle is not None and isinstance(extensions, dict) and _has_body_internals(cycle):
                extensions[WRITE_BODY_NOWAIT] = partial(_write_body_nowait, cycle)
            event = getattr(cycle, "message_event", None)
            if isinstance(event, asyncio.Event):  # the cycle's task has not started: nobody waits yet
                cycle.message_event = _LeanEvent.like(event)  # type: ignore[union-attr]

    def _watch_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once when the connection is lost; returns the cancellation.

        What a streaming response would otherwise learn from a task blocked in ``receive()``.
        """
        if self.transport.is_closing():
            handle = asyncio.get_running_loop().call_soon(callback)
            return handle.cancel
        if self._on_lost is None:
            self._on_lost = []
        self._on_lost.append(callback)

        def cancel() -> None:
            if self._on_lost is not None and callback in self._on_lost:
                self._on_lost.remove(callback)

        return cancel


class _LeanEvent:
    """``asyncio.Event`` for one connection, minus the 600-byte deque it allocates up front."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    @classmethod
    def like(cls, event: asyncio.Event) -> _LeanEvent:
        lean = cls()
        lean._value = event.is_set()
        return lean

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> None:
        if self._value:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class _LeanPipeline(list[Any]):
    """uvicorn's pipelined-request deque (appendleft, pop): a list, as it rarely holds anything."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class _LeanQueue:
    """The part of ``asyncio.Queue`` uvicorn's WebSocket protocol uses (put_nowait, get, empty), minus
    three deques (~2.3 KiB per connection): it holds at most a message or two between reads."""

    __slots__ = ("_items", "_ready")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._ready = _LeanEvent()

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.pop(0)


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets (sans-I/O) protocol whose connection scopes carry the transport's abort."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per-connection memory is what bounds idle viewers per process: same behaviour, lighter parts.
        if isinstance(getattr(self, "queue", None), asyncio.Queue) and self.queue.empty():
            self.queue = cast(Any, _LeanQueue())
        writable = getattr(self, "writable", None)
        if isinstance(writable, asyncio.Event):
            self.writable = cast(Any, _LeanEvent.like(writable))

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and all(hasattr(self, a) for a in ("conn", "writable", "disconnected", "close_sent")):
            extensions = scope.setdefault("extensions", {})
            extensions[ABORT] = self.transport.abort
            extensions[SEND_TEXT_NOWAIT] = self.send_text_nowait
            if all(hasattr(self.conn, a) for a in ("extensions", "expect_continuation_frame", "state")):
                extensions[WRITE_FRAME_NOWAIT] = self.write_frame_nowait
                extensions[PLAIN_FRAMES] = self.plain_frames

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message.get("type") == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (two header maps, ~2.4 KiB) are never read again.
            attrs = vars(self)
            attrs.pop("request", None)
            attrs.pop("response", None)

    def send_text_nowait(self, text: str | bytes) -> bool:
        """Write one text message now, from synchronous code: the fan-out fast path.

        The same steps as ASGI ``websocket.send``, minus the awaits: False (nothing written) when the
        socket is not writable right now, so the caller falls back to its queue and the async path.
        """
        if not self._writable_now():
            return False
        # UTF-8 bytes go in as they are: no decode/encode round trip per viewer.
        self.conn.send_text(text if isinstance(text, bytes) else text.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def plain_frames(self) -> bool:
        """True once open with no extension negotiated: frames are the same bytes on every connection."""
        return self.handshake_complete and not self.conn.extensions

    def write_frame_nowait(self, frame: bytes) -> bool:
        """Write one complete, pre-encoded text frame (``ws_text_frame``) now: fan-out's shared bytes.

        A server frame is unmasked, so one message is the same bytes on every connection that
        negotiated no extension; False (nothing written) when this one did (permessage-deflate
        compresses per connection), or is not writable right now.
        """
        conn = self.conn
        if (
            not self._writable_now()
            or conn.extensions
            or conn.expect_continuation_frame
            or conn.state is not State.OPEN
        ):
            return False
        self.transport.write(frame)
        return True

    def _writable_now(self) -> bool:
        """Open, not closing, and not paused by flow control: a write now would not queue in asyncio."""
        return not (
            self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or not self.writable.is_set()
            or self.transport.is_closing()
        )


def ws_text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455 §5.2) carrying UTF-8 ``payload``."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def _has_body_internals(cycle: Any) -> bool:
    names = ("disconnected", "response_started", "response_complete", "chunked_encoding", "flow", "transport")
    return all(hasattr(cycle, name) for name in names) and hasattr(cycle.flow, "write_paused")


def _write_body_nowait(cycle: Any, data: bytes) -> bool:
    """One streaming body chunk written now from synchronous code (the SSE fan-out fast path).

    The same bytes ASGI ``http.response.body`` (more_body) would write; False when the response is
    not a started chunked stream or the socket is not writable right now.
    """
    if (
        cycle.disconnected
        or not cycle.response_started
        or cycle.response_complete
        or not cycle.chunked_encoding
        or cycle.flow.write_paused
        or cycle.transport.is_closing()
    ):
        return False
    cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
    return True


def write_body_nowait_of(scope: Mapping[str, Any]) -> Callable[[bytes], bool] | None:
    """The synchronous body write of the HTTP response behind ``scope``, when the server provides one."""
    fast = (scope.get("extensions") or {}).get(WRITE_BODY_NOWAIT)
    return fast if callable(fast) else None


def send_text_nowait_of(scope: Mapping[str, Any]) -> Callable[[str | bytes], bool] | None:
    """The synchronous text write of the WebSocket behind ``scope``, when the server provides one."""
    fast = (scope.get("extensions") or {}).get(SEND_TEXT_NOWAIT)
    return fast if callable(fast) else None


def write_frame_nowait_of(scope: Mapping[str, Any]) -> Callable[[bytes], bool] | None:
    """The synchronous raw-frame write of the WebSocket behind ``scope``, when its frames are plain.

    None when the server provides no such write, or the connection negotiated an extension.
    """
    extensions = scope.get("extensions") or {}
    fast, plain = extensions.get(WRITE_FRAME_NOWAIT), extensions.get(PLAIN_FRAMES)
    return fast if callable(fast) and callable(plain) and plain() else None


def on_disconnect_of(scope: Mapping[str, Any]) -> Callable[[Callable[[], None]], Callable[[], None]] | None:
    """Register a callback for the loss of the HTTP connection behind ``scope``, when the server can."""
    watch = (scope.get("extensions") or {}).get(ON_DISCONNECT)
    return watch if callable(watch) else None


def abort_of(scope: Mapping[str, Any]) -> Callable[[], None] | None:
    """The hard close of the connection behind ``scope``, when the server provides one."""
    abort = (scope.get("extensions") or {}).get(ABORT)
    return abort if callable(abort) else None
