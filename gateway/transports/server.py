"""uvicorn protocol classes that let the gateway hard-close a connection (scope extension ``hqgw.abort``).

A peer that stops reading is never done with: asyncio's ``transport.close()`` waits for the send
buffer to drain, so a viewer cut loose for being stuck would keep its socket and buffers until it
goes away. ``transport.abort()`` drops them at once; ASGI has no such verb, so the protocols put it
in the scope's extensions. Everything works without it (then the socket lingers, bounded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ABORT = "hqgw.abort"


class AbortableHttpProtocol(HttpToolsProtocol):
    """httptools protocol whose request scopes carry the transport's abort."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = {ABORT: self.transport.abort}
        self.scope["extensions"] = cast(Any, extensions)


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets (sans-I/O) protocol whose connection scopes carry the transport's abort."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.setdefault("extensions", {})[ABORT] = self.transport.abort


def abort_of(scope: Mapping[str, Any]) -> Callable[[], None] | None:
    """The hard close of the connection behind ``scope``, when the server provides one."""
    abort = (scope.get("extensions") or {}).get(ABORT)
    return abort if callable(abort) else None
