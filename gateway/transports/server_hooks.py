"""The connection layer's one guard: which server-specific hooks run.

The hooks (uvicorn protocol subclasses) are in ``uvicorn_hooks``, imported here and nowhere else:
when ``GATEWAY_SERVER_HOOKS=off``, or the installed uvicorn lacks what they need, every hook is off,
uvicorn runs its stock protocols and the gateway plain ASGI (correct, slower). The start log line
and ``hqgw_server_hooks{hook}`` say which way it went.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Settings

# What each hook gives, by the name the start log line and hqgw_server_hooks{hook} use.
HOOKS: dict[str, str] = {
    "abort": "hard close of a stuck viewer's socket (HTTP and WebSocket)",
    "http_disconnect_watch": "a streaming response hears of its client's disconnect without a reader task",
    "sse_write_nowait": "SSE fan-out writes body chunks synchronously",
    "ws_send_nowait": "WebSocket fan-out writes text messages synchronously",
    "ws_shared_frames": "one WebSocket frame encoded per envelope, the same bytes to every plain viewer",
    "lean_connection_state": "lighter per-connection events, queues and handshake state",
    "request_head_limits": "request heads bounded in size (431) and time (408), counted per address",
}


@dataclass(frozen=True, slots=True)
class ServerHooks:
    """What ``load_hooks`` decided: uvicorn's ``http=``/``ws=`` values, and why hooks are off if they are."""

    http: Any  # a protocol class, or "h11" / "auto"
    ws: Any
    active: bool
    reason: str  # why the hooks are off ("" when on)

    def describe(self) -> str:
        if self.active:
            return f"server hooks on: {', '.join(HOOKS)}"
        return f"server hooks off ({self.reason}): plain ASGI, stuck sockets linger, fan-out writes are async"


def load_hooks(
    enabled: bool,
    *,
    max_head_bytes: int,
    head_timeout_s: float,
    max_heads_per_address: int,
    on_refusal: Callable[[str], None] | None = None,
) -> ServerHooks:
    """The uvicorn protocols to run: the hook classes when ``enabled`` and importable, else uvicorn's own.

    ``on_refusal(reason)`` hears of every connection the head limits refuse (for a metric).
    """
    if not enabled:
        return ServerHooks("h11", "websockets-sansio", False, "GATEWAY_SERVER_HOOKS=off")
    try:
        from gateway.transports import uvicorn_hooks

        missing = [f"{cls.__name__}.{name}" for cls, names in uvicorn_hooks.REQUIRED.items()
                   for name in names if not hasattr(cls, name)]  # fmt: skip
    except ImportError as exc:  # uvicorn without httptools or websockets' sans-I/O protocol
        return ServerHooks("h11", "auto", False, f"cannot import them: {exc}")
    if missing:
        return ServerHooks("h11", "websockets-sansio", False, f"this uvicorn lacks {', '.join(missing)}")
    http = uvicorn_hooks.bounded_http_protocol(max_head_bytes, head_timeout_s, max_heads_per_address, on_refusal)
    return ServerHooks(http, uvicorn_hooks.AbortableWebSocketProtocol, True, "")


def hooks_for(settings: Settings, on_refusal: Callable[[str], None] | None = None) -> ServerHooks:
    """``load_hooks`` as ``settings`` ask: GATEWAY_SERVER_HOOKS, head bounds, per-address limit."""
    return load_hooks(
        settings.server_hooks == "on",
        max_head_bytes=settings.max_header_bytes,
        head_timeout_s=settings.request_head_timeout_s,
        max_heads_per_address=settings.max_connections_per_client,
        on_refusal=on_refusal,
    )


class RequestHeadLimit:
    """ASGI middleware: the request-head size bound (431) for when the hooks are off.

    uvicorn's h11 bounds only a head still incomplete in its buffer (``h11_max_incomplete_event_size``);
    one that arrives whole in a single read is parsed at any size, so the parsed head is measured here.
    """

    def __init__(self, app: ASGIApp, max_head_bytes: int) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _head_size(scope) > self.max_head_bytes:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1009, "reason": "request head too large"})
                return
            body = b"request head too large\n"
            headers = [(b"content-type", b"text/plain"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _head_size(scope: Scope) -> int:
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope.get("headers") or ())
