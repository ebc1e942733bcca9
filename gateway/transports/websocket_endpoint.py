"""The WebSocket endpoints of a SockJS service: raw ``/websocket`` (STOMP frames as messages) and SockJS's.

Each accepted socket becomes a ``WebSocketPipe``, gets a handler from the factory, and is read
until it ends; the handler hears about the end exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.protocols import sockjs
from gateway.protocols.sockjs import PayloadError
from gateway.transports.pipe import (
    HANDLER_TIMEOUT_S,
    ConnectionInfo,
    HandlerFactory,
    PipeHandler,
    connection_info,
    notify_closed,
)
from gateway.transports.sockjs_options import SockJsOptions
from gateway.transports.websocket_pipe import WebSocketPipe

log = logging.getLogger(__name__)


def websocket_app(endpoint: Callable[[WebSocket], Awaitable[None]], params: dict[str, str]) -> ASGIApp:
    """``endpoint`` as a bare ASGI app with ``params`` as its path parameters (no router in between)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_params"] = params
        await endpoint(WebSocket(scope, receive, send))

    return app


class WebSocketEndpoint:
    """Serves WebSocket connections (raw and SockJS-framed) with handlers from ``factory``."""

    def __init__(
        self, factory: HandlerFactory, options: SockJsOptions, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.factory = factory
        self.options = options
        self.clock = clock
        self.sockets: set[WebSocketPipe] = set()
        self.closing = False

    async def raw(self, ws: WebSocket) -> None:
        if await self._admit(ws):
            await self._run(WebSocketPipe(ws, framed=False, clock=self.clock), connection_info(ws, "websocket"))

    async def sockjs(self, ws: WebSocket) -> None:
        params = ws.path_params
        if not (sockjs.valid_id(params["server"]) and sockjs.valid_id(params["session"])):
            await ws.close(1008)
            return
        # sockjs-protocol: a WebSocket session lives and dies with its socket; the id is not kept.
        if await self._admit(ws):
            pipe = WebSocketPipe(ws, framed=True, clock=self.clock)
            await self._run(pipe, connection_info(ws, "sockjs-websocket"))

    async def close_all(self, timeout_s: float) -> None:
        """Shutdown: refuse new sockets, close every one with Go away! (1001), wait (bounded)."""
        self.closing = True
        sockets = list(self.sockets)
        await asyncio.gather(*(s.close_with(sockjs.GO_AWAY, ws_code=1001) for s in sockets))
        waiters = [asyncio.create_task(s.wait_done()) for s in sockets]
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _admit(self, ws: WebSocket) -> bool:
        """Accept the handshake, or refuse it; servers answer a close before accept with 403."""
        if self.options.origin_allowed(ws.headers.get("origin")) and not self.closing:
            offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
            chosen = next((p for p in self.options.subprotocols if p in offered), None)
            # A client offering none of ours (or none at all) is still served: STOMP needs no subprotocol.
            await ws.accept(subprotocol=chosen)
            return True
        # Not send_denial_response: uvicorn's websockets-sansio logs a false error after it.
        await ws.close(1008)
        return False

    async def _run(self, pipe: WebSocketPipe, info: ConnectionInfo) -> None:
        self.sockets.add(pipe)
        handler: PipeHandler | None = None
        heartbeats: asyncio.Task[None] | None = None
        try:
            if pipe.framed:
                # 'o' before the handler exists: sockjs-client times a transport out after ~2 RTTs.
                await pipe.write(sockjs.open_frame())
            try:
                async with asyncio.timeout(HANDLER_TIMEOUT_S):
                    handler = await self.factory(pipe, info)
            except Exception:
                log.exception("sockjs: handler factory failed")
                await pipe.close_with(sockjs.SERVER_ERROR)
                return
            if pipe.framed:
                heartbeats = asyncio.create_task(pipe.heartbeats(self.options.heartbeat_s))
            await self._read_loop(pipe, handler)
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
                await asyncio.gather(heartbeats, return_exceptions=True)
            pipe.closed = True
            self.sockets.discard(pipe)
            pipe.finish()
            if handler is not None:
                await notify_closed(handler)

    async def _read_loop(self, pipe: WebSocketPipe, handler: PipeHandler) -> None:
        limit = self.options.max_message_bytes
        while True:
            message: Message = await pipe.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text: str | None = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
            if len(text) > limit // 4 and len(text.encode()) > limit:
                await pipe.close_with(sockjs.MESSAGE_TOO_BIG, frame=False)
                return
            if pipe.closed:
                continue  # draining until the peer answers our close
            if not pipe.framed:
                messages = [text]
            elif not text:
                continue  # sockjs-protocol: empty frames are ignored
            else:
                try:
                    messages = sockjs.decode_client_payload(text)
                except PayloadError:
                    # sockjs-protocol: broken JSON ends the session abruptly, without a c frame.
                    await pipe.close_with(sockjs.BROKEN_FRAMING, frame=False)
                    return
            for m in messages:
                try:
                    await handler.on_message(m)
                except Exception:
                    log.exception("sockjs: handler on_message failed")
                    await pipe.close_with(sockjs.SERVER_ERROR)
                    return
