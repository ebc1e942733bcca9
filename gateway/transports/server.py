"""How transports reach the server hooks: optional callables in an ASGI scope's ``extensions``.

The names below, read through the ``*_of`` accessors, each None when absent: every transport works
on plain ASGI, the hooks only make it faster and lighter. Which hooks run is decided once, in
``server_hooks.load_hooks``; the hooks themselves are in ``uvicorn_hooks``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from websockets.frames import Frame, Opcode

ABORT = "hqgw.abort"
SEND_TEXT_NOWAIT = "hqgw.send_text_nowait"
WRITE_FRAME_NOWAIT = "hqgw.write_frame_nowait"
PLAIN_FRAMES = "hqgw.plain_frames"
WRITE_BODY_NOWAIT = "hqgw.write_body_nowait"
ON_DISCONNECT = "hqgw.on_disconnect"


def ws_text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455 §5.2) carrying UTF-8 ``payload``.

    Built by websockets' sans-I/O ``Frame``, once per envelope: a server frame is unmasked, so the
    same bytes go to every viewer whose connection negotiated no extension.
    """
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


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
