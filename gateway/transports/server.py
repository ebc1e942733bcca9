"""uvicorn protocol classes that let the gateway hard-close a connection (scope extension ``hqgw.abort``).

A peer that stops reading is never done with: asyncio's ``transport.close()`` waits for the send
buffer to drain, so a viewer cut loose for being stuck would keep its socket and buffers until it
goes away. ``transport.abort()`` drops them at once; ASGI has no such verb, so the protocols put it
in the scope's extensions. Everything works without it (then the socket lingers, bounded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ABORT = "hqgw.abort"
SEND_TEXT_NOWAIT = "hqgw.send_text_nowait"
WRITE_BODY_NOWAIT = "hqgw.write_body_nowait"


class AbortableHttpProtocol(HttpToolsProtocol):
    """httptools protocol whose request scopes carry the transport's abort."""

    # These hooks lean on uvicorn internals (scope, cycle, transport): if a uvicorn release changes
    # them, the hooks switch themselves off and the gateway falls back to plain ASGI.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        with suppress(AttributeError, TypeError):
            extensions: dict[str, Any] = {ABORT: self.transport.abort}
            self.scope["extensions"] = cast(Any, extensions)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        with suppress(AttributeError, TypeError):
            cycle = getattr(self, "cycle", None)
            extensions = cast(Any, self.scope.get("extensions"))
            if cycle is not None and isinstance(extensions, dict) and _has_body_internals(cycle):
                extensions[WRITE_BODY_NOWAIT] = partial(_write_body_nowait, cycle)


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets (sans-I/O) protocol whose connection scopes carry the transport's abort."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and all(hasattr(self, a) for a in ("conn", "writable", "disconnected", "close_sent")):
            extensions = scope.setdefault("extensions", {})
            extensions[ABORT] = self.transport.abort
            extensions[SEND_TEXT_NOWAIT] = self.send_text_nowait

    def send_text_nowait(self, text: str | bytes) -> bool:
        """Write one text message now, from synchronous code: the fan-out fast path.

        The same steps as ASGI ``websocket.send``, minus the awaits: False (nothing written) when the
        socket is not writable right now, so the caller falls back to its queue and the async path.
        """
        if (
            self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        # UTF-8 bytes go in as they are: no decode/encode round trip per viewer.
        self.conn.send_text(text if isinstance(text, bytes) else text.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True


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


def abort_of(scope: Mapping[str, Any]) -> Callable[[], None] | None:
    """The hard close of the connection behind ``scope``, when the server provides one."""
    abort = (scope.get("extensions") or {}).get(ABORT)
    return abort if callable(abort) else None
