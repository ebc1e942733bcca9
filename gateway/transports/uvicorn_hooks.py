"""Every uvicorn-specific connection hook, in one module: import it only through ``server.load_hooks``.

ASGI has no verb for what a fan-out server needs most: a hard close (``transport.abort()``: a peer
that stops reading would otherwise keep its socket and buffers while asyncio drains them), a write
from synchronous code that either goes out now or tells the caller to queue, and WebSocket frames
encoded once for every viewer. These protocol subclasses put such calls in the scope's extensions
(names in ``server.py``), shrink uvicorn's per-connection objects, and bound request heads in size
and time. They lean on uvicorn internals (protocol and cycle attributes); ``server.load_hooks``
imports this module behind one guard, and ``tests/integration/test_server_hooks.py`` holds a
contract test per hook, so a uvicorn release that changes one fails a test rather than production.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from gateway.transports.server import (
    ABORT,
    ON_DISCONNECT,
    PLAIN_FRAMES,
    SEND_TEXT_NOWAIT,
    WRITE_BODY_NOWAIT,
    WRITE_FRAME_NOWAIT,
)

HEAD_TOO_LARGE = b"request head too large\n"
HEAD_TIMEOUT = b"request head not completed in time\n"
TOO_MANY_HEADS = b"too many incomplete requests from one address\n"

# The uvicorn names each hook touches, checked once at import by ``server.load_hooks``: a rename
# switches every hook off (logged); a change of behaviour is caught by the contract tests.
REQUIRED: dict[type, tuple[str, ...]] = {
    HttpToolsProtocol: ("connection_made", "connection_lost", "data_received", "on_message_begin",
                        "on_headers_complete", "on_message_complete"),
    RequestResponseCycle: ("send",),
    FlowControl: ("pause_writing", "resume_writing"),
    WebSocketsSansIOProtocol: ("handle_connect", "send", "connection_lost"),
}  # fmt: skip


def _plain_response(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


class AbortableHttpProtocol(HttpToolsProtocol):
    """httptools protocol whose request scopes carry the transport's abort and a disconnect watch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._on_lost: list[Callable[[], None]] | None = None
        super().__init__(*args, **kwargs)
        if not self.pipeline:
            self.pipeline = cast(Any, _LeanPipeline())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = cast(Any, _LeanEvent.like(self.flow._is_writable_event))

    def connection_lost(self, exc: Exception | None) -> None:
        callbacks, self._on_lost = self._on_lost, None
        super().connection_lost(exc)
        for callback in callbacks or ():
            callback()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = {ABORT: self.transport.abort, ON_DISCONNECT: self._watch_disconnect}
        self.scope["extensions"] = cast(Any, extensions)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a new request, not a WebSocket upgrade
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[WRITE_BODY_NOWAIT] = partial(_write_body_nowait, cycle)
            # The cycle's task has not started: nobody waits on its event yet.
            cycle.message_event = cast(Any, _LeanEvent.like(cycle.message_event))

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


def bounded_http_protocol(
    max_head_bytes: int,
    head_timeout_s: float,
    max_heads_per_address: int,
    on_refusal: Callable[[str], None] | None = None,
) -> type[AbortableHttpProtocol]:
    """uvicorn's ``http=`` class: ``AbortableHttpProtocol`` with request heads bounded in size and time.

    A head larger than ``max_head_bytes`` (plus one read) is answered 431; one not complete
    ``head_timeout_s`` after it began (or after the connection opened) 408; both close the
    connection. Connections whose head is still arriving count per client address: beyond
    ``max_heads_per_address`` (0: unbounded) a new connection is answered 429 at once.
    ``on_refusal`` hears each refusal's reason (``request_head_too_large``, ``request_head_timeout``,
    ``too_many_incomplete_heads``).
    """
    heads: Counter[str] = Counter()  # client address → connections in the middle of a head

    class BoundedHttpToolsProtocol(AbortableHttpProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_address: str | None = None  # set while this connection counts in ``heads``
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else "unknown"
            if max_heads_per_address and heads[address] >= max_heads_per_address:
                self._refuse(b"429 Too Many Requests", TOO_MANY_HEADS, "too_many_incomplete_heads")
                return
            self._head_begins(address)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_ends()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse(b"431 Request Header Fields Too Large", HEAD_TOO_LARGE, "request_head_too_large")
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_address is None:  # a keep-alive connection's next request
                self._head_begins(self.client[0] if self.client else "unknown")

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._head_ends()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True

        def _head_begins(self, address: str) -> None:
            self._head_address = address
            heads[address] += 1
            self._head_timer = asyncio.get_running_loop().call_later(head_timeout_s, self._head_timed_out)

        def _head_ends(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            address, self._head_address = self._head_address, None
            if address is not None:
                heads[address] -= 1
                if heads[address] <= 0:
                    del heads[address]

        def _head_timed_out(self) -> None:
            self._head_timer = None
            self._refuse(b"408 Request Timeout", HEAD_TIMEOUT, "request_head_timeout")

        def _refuse(self, status: bytes, body: bytes, reason: str) -> None:
            self._refused = True
            self._head_ends()
            if on_refusal is not None:
                on_refusal(reason)
            if not self.transport.is_closing():
                self.transport.write(_plain_response(status, body))
                self.transport.close()

    return BoundedHttpToolsProtocol


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

    async def get(self) -> Any:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.pop(0)


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets (sans-I/O) protocol whose connection scopes carry abort and synchronous writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per-connection memory is what bounds idle viewers per process: same behaviour, lighter parts.
        self.queue = cast(Any, _LeanQueue())
        self.writable = cast(Any, _LeanEvent.like(self.writable))

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions[ABORT] = self.transport.abort
        extensions[SEND_TEXT_NOWAIT] = self.send_text_nowait
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
