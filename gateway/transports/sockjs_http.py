"""SockJS on Starlette: ``/info``, the websocket, xhr, xhr_streaming and eventsource transports, raw ``/websocket``.

The protocol lives in ``gateway.protocols.sockjs``; this module only moves its frames between
sockets and a ``PipeHandler``. ``iframe*.html`` is not served (404): it only exists for the
iframe-* transports that browsers without CORS need; sockjs-client 1.6 in any current browser uses
CORS for ``/info`` and for every transport here.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.errors import ConfigError
from gateway.protocols import sockjs
from gateway.protocols.sockjs import CloseStatus, PayloadError, QueueOverflow, SockJsSession
from gateway.transports.pipe import ConnectionInfo, HandlerFactory, PipeHandler
from gateway.transports.server import abort_of, send_text_nowait_of, write_frame_nowait_of, ws_text_frame

log = logging.getLogger(__name__)

NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
ONE_YEAR_S = 365 * 24 * 3600
SEND_TIMEOUT_S = 10.0  # as Spring's sendTimeLimit: a peer that reads nothing this long is cut loose
HANDLER_TIMEOUT_S = 10.0  # bound on waiting for a handler to be built, or to hear about a close
SHUTDOWN_TIMEOUT_S = 5.0
_RECEIVERS = {"xhr": "xhr-polling", "xhr_streaming": "xhr-streaming", "eventsource": "eventsource"}
_METHODS = {"xhr": "POST", "xhr_send": "POST", "xhr_streaming": "POST", "eventsource": "GET", "websocket": "GET"}
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Codes a server may put in a WebSocket close frame (RFC 6455 §7.4, IANA registry, 3000-4999 apps).
_WIRE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


@dataclass(frozen=True, slots=True)
class SockJsOptions:
    """Tunables of one SockJS service; the defaults are sockjs-node's."""

    heartbeat_s: float = 25.0
    disconnect_delay_s: float = 5.0
    allowed_origins: frozenset[str] | None = None  # None: any origin
    max_message_bytes: int = 65536  # one WebSocket message or one xhr_send body
    max_queue: int = 1000  # messages held for an HTTP session between receivers
    cookie_needed: bool = False
    response_limit: int = 128 * 1024  # bytes before a streaming response ends so the client GCs it
    max_sessions: int = 10_000
    # WebSocket subprotocols the app speaks, preferred first (e.g. v12.stomp); offered → chosen.
    subprotocols: tuple[str, ...] = ()
    # Also serve the raw (unframed) WebSocket at the prefix itself, as Spring's endpoint does.
    raw_at_prefix: bool = False

    def __post_init__(self) -> None:
        limits = ("heartbeat_s", "disconnect_delay_s", "max_message_bytes", "max_queue", "response_limit")
        for name in (*limits, "max_sessions"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sockjs {name}: expected a positive number, got {getattr(self, name)!r}")


def _client(conn: HTTPConnection) -> str:
    return f"{conn.client.host}:{conn.client.port}" if conn.client else "unknown"


def _info(conn: HTTPConnection, transport: str) -> ConnectionInfo:
    return ConnectionInfo(transport, _client(conn), dict(conn.headers.items()), dict(conn.query_params))


def _wire_code(code: int) -> int:
    return code if code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999 else 1000


async def _notify_closed(handler: PipeHandler) -> None:
    try:
        async with asyncio.timeout(HANDLER_TIMEOUT_S):
            await handler.on_close()
    except Exception:
        log.exception("sockjs: handler on_close failed")


class _HttpSession:
    """One session served by HTTP receivers; it is the handler's ``Pipe`` and owns one task."""

    def __init__(self, server: SockJsServer, session_id: str, info: ConnectionInfo) -> None:
        self.id = session_id
        self.info = info
        self.core = SockJsSession(
            heartbeat_s=server.options.heartbeat_s,
            disconnect_delay_s=server.options.disconnect_delay_s,
            max_queue=server.options.max_queue,
            now=server.clock(),
        )
        self.news = asyncio.Event()  # the attached receiver has something to poll
        self._wake = asyncio.Event()  # the supervisor must re-read state or deadlines
        self._ready = asyncio.Event()
        self._inbound = asyncio.Lock()  # xhr_send requests deliver in order, one at a time
        self._handler: PipeHandler | None = None
        self._terminating = False
        self._notified = False
        self._server = server
        self.task = asyncio.create_task(self._supervise())

    async def send(self, message: str) -> None:
        self._queue([message])

    async def send_many(self, messages: list[str]) -> None:
        if messages:
            self._queue(messages)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_with(CloseStatus(code, reason))

    def _queue(self, messages: list[str]) -> None:
        try:
            if self.core.send(messages):
                self.news.set()
        except QueueOverflow as exc:
            log.warning("sockjs: closing a %s session: %s", self.info.transport, exc)
            self.close_with(sockjs.QUEUE_FULL)

    def close_with(self, status: CloseStatus) -> None:
        if self.core.close(status):
            self.changed()

    def changed(self) -> None:
        self.news.set()
        self._wake.set()

    def terminate(self) -> None:
        """Server shutdown: say Go away! and expire as soon as no receiver holds the session."""
        self._terminating = True
        self.close_with(sockjs.GO_AWAY)
        self.changed()

    async def deliver(self, messages: list[str]) -> None:
        """Hand inbound messages to the handler, waiting (bounded) for it to be built."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANDLER_TIMEOUT_S):
                await self._ready.wait()
        async with self._inbound:
            for message in messages:
                if self._handler is None or self.core.closing:
                    return
                try:
                    await self._handler.on_message(message)
                except Exception:
                    log.exception("sockjs: handler on_message failed")
                    self.close_with(sockjs.SERVER_ERROR)

    async def _supervise(self) -> None:
        """Build the handler, expire the session after the disconnect delay, tell the handler once."""
        try:
            try:
                async with asyncio.timeout(HANDLER_TIMEOUT_S):
                    self._handler = await self._server.factory(self, self.info)
            except Exception:
                log.exception("sockjs: handler factory failed")
                self.close_with(sockjs.SERVER_ERROR)
            finally:
                self._ready.set()
            while True:
                self._wake.clear()
                if self.core.closing:
                    await self._notify_once()  # the handler stops producing while the session lingers
                now = self._server.clock()
                if not self.core.receiver_attached and (self._terminating or self.core.disconnect_due(now)):
                    return
                deadline = self.core.disconnect_deadline()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if deadline is None else max(0.0, deadline - now)):
                        await self._wake.wait()
        finally:
            self.core.expire()
            self.news.set()
            self._server.forget(self)
            await self._notify_once()

    async def _notify_once(self) -> None:
        if self._notified or self._handler is None:
            return
        self._notified = True
        async with self._inbound:  # never while an xhr_send is still in on_message
            await _notify_closed(self._handler)


def _sockjs_ws_frame(message: bytes) -> bytes:
    return ws_text_frame(sockjs.message_frame([message.decode()]).encode())


class _WebSocketPipe:
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


def _websocket_app(endpoint: Callable[[WebSocket], Awaitable[None]], params: dict[str, str]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_params"] = params
        await endpoint(WebSocket(scope, receive, send))

    return app


class SockJsRoutes(list[BaseRoute]):
    """The routes of one SockJS service, with the ``SockJsServer`` behind them."""

    def __init__(self, server: SockJsServer) -> None:
        super().__init__(server.routes())
        self.server = server


class SockJsServer:
    """One SockJS service under ``prefix``: its routes, its sessions and their shutdown."""

    def __init__(
        self,
        prefix: str,
        factory: HandlerFactory,
        options: SockJsOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.factory = factory
        self.options = options or SockJsOptions()
        self.clock = clock
        self._sessions: dict[str, _HttpSession] = {}
        self._sockets: set[_WebSocketPipe] = set()
        self._closing = False

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def connection_count(self) -> int:
        return len(self._sessions) + len(self._sockets)

    def routes(self) -> list[BaseRoute]:
        p = self.prefix
        raw = [WebSocketRoute(p or "/", self._raw_websocket)] if self.options.raw_at_prefix else []
        return [
            *raw,
            Route(p or "/", self._greeting, methods=["GET"]),
            Route(p + "/", self._greeting, methods=["GET"]),
            Route(p + "/info", self._info, methods=["GET", "OPTIONS"]),
            WebSocketRoute(p + "/websocket", self._raw_websocket),
            WebSocketRoute(p + "/{server}/{session}/websocket", self._sockjs_websocket),
            Route(p + "/{server}/{session}/{transport}", _SessionEndpoint(self)),
        ]

    def websocket_endpoint(self, scope: Scope) -> ASGIApp | None:
        """The ASGI app for a WebSocket scope on one of this service's WebSocket paths, else None.

        The same endpoints as ``routes()``, reachable without a router: a socket lives as long as its
        viewer, and every routing layer it passes keeps a frame alive that long.
        """
        path: str = scope["path"]
        if not path.startswith(self.prefix):
            return None
        rest = path[len(self.prefix) :]
        if (rest in ("", "/") and self.options.raw_at_prefix) or rest == "/websocket":
            return _websocket_app(self._raw_websocket, {})
        parts = rest.split("/")
        if len(parts) == 4 and parts[0] == "" and parts[3] == "websocket" and parts[1] and parts[2]:
            return _websocket_app(self._sockjs_websocket, {"server": parts[1], "session": parts[2]})
        return None

    def forget(self, session: _HttpSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def close_all(self) -> None:
        """Shutdown: refuse new sessions, close every one with Go away! (1001), wait (bounded)."""
        self._closing = True
        sessions = list(self._sessions.values())
        sockets = list(self._sockets)
        for session in sessions:
            session.terminate()
        await asyncio.gather(*(s.close_with(sockjs.GO_AWAY, ws_code=1001) for s in sockets))
        waiters = [asyncio.create_task(s.wait_done()) for s in sockets]
        tasks: list[asyncio.Task[None]] = [s.task for s in sessions]
        pending: set[asyncio.Task[object]] = set()
        if tasks or waiters:
            _, pending = await asyncio.wait([*tasks, *waiters], timeout=SHUTDOWN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- HTTP helpers -------------------------------------------------------------------------

    def origin_allowed(self, origin: str | None) -> bool:
        allowed = self.options.allowed_origins
        return origin is None or allowed is None or "*" in allowed or origin.lower().rstrip("/") in allowed

    def headers(self, conn: HTTPConnection, *, eventsource: bool = False) -> dict[str, str]:
        """CORS headers for the request's origin, plus the JSESSIONID cookie when configured."""
        origin = conn.headers.get("origin")
        out = {"Vary": "Origin"}
        if origin is None or (eventsource and origin == "null"):
            out["Access-Control-Allow-Origin"] = "*"
        else:
            out["Access-Control-Allow-Origin"] = origin
            out["Access-Control-Allow-Credentials"] = "true"
        if requested := conn.headers.get("access-control-request-headers"):
            out["Access-Control-Allow-Headers"] = requested
        if self.options.cookie_needed:
            # Load balancers that stick on JSESSIONID need to see one (sockjs-protocol, JsessionidCookie).
            value = conn.cookies.get("JSESSIONID", "")
            out["Set-Cookie"] = f"JSESSIONID={value if _COOKIE_VALUE.fullmatch(value) else 'dummy'}; path=/"
        return out

    def preflight(self, request: Request, methods: str) -> Response:
        """CORS preflight answer, cacheable for a year as sockjs-protocol asks."""
        headers = self.headers(request)
        expires = email.utils.formatdate(time.time() + ONE_YEAR_S, usegmt=True)
        headers.update(
            {
                "Cache-Control": f"public, max-age={ONE_YEAR_S}",
                "Expires": expires,
                "Access-Control-Max-Age": str(ONE_YEAR_S),
                "Access-Control-Allow-Methods": methods,
            }
        )
        return Response(status_code=204, headers=headers)

    async def _greeting(self, request: Request) -> Response:
        return PlainTextResponse("Welcome to SockJS!\n")

    async def _info(self, request: Request) -> Response:
        if not self.origin_allowed(request.headers.get("origin")):
            return Response(status_code=403)
        if request.method == "OPTIONS":
            return self.preflight(request, "OPTIONS, GET")
        body = sockjs.info_body(websocket=True, cookie_needed=self.options.cookie_needed, entropy=secrets.randbits(32))
        headers = self.headers(request) | {"Cache-Control": NO_CACHE}
        return Response(body, headers=headers, media_type="application/json; charset=UTF-8")

    # -- WebSocket transports ------------------------------------------------------------------

    async def _admit(self, ws: WebSocket) -> bool:
        """Accept the handshake, or refuse it; servers answer a close before accept with 403."""
        if self.origin_allowed(ws.headers.get("origin")) and not self._closing:
            offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
            chosen = next((p for p in self.options.subprotocols if p in offered), None)
            # A client offering none of ours (or none at all) is still served: STOMP needs no subprotocol.
            await ws.accept(subprotocol=chosen)
            return True
        # Not send_denial_response: uvicorn's websockets-sansio logs a false error after it.
        await ws.close(1008)
        return False

    async def _raw_websocket(self, ws: WebSocket) -> None:
        if await self._admit(ws):
            await self._run_websocket(_WebSocketPipe(ws, framed=False, clock=self.clock), _info(ws, "websocket"))

    async def _sockjs_websocket(self, ws: WebSocket) -> None:
        params = ws.path_params
        if not (sockjs.valid_id(params["server"]) and sockjs.valid_id(params["session"])):
            await ws.close(1008)
            return
        # sockjs-protocol: a WebSocket session lives and dies with its socket; the id is not kept.
        if await self._admit(ws):
            await self._run_websocket(_WebSocketPipe(ws, framed=True, clock=self.clock), _info(ws, "sockjs-websocket"))

    async def _run_websocket(self, pipe: _WebSocketPipe, info: ConnectionInfo) -> None:
        self._sockets.add(pipe)
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
            self._sockets.discard(pipe)
            pipe.finish()
            if handler is not None:
                await _notify_closed(handler)

    async def _read_loop(self, pipe: _WebSocketPipe, handler: PipeHandler) -> None:
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

    # -- HTTP session transports -----------------------------------------------------------------

    def session(self, session_id: str, info: ConnectionInfo) -> _HttpSession | None:
        """The live session with this id, created if absent; None when no more may be opened."""
        session = self._sessions.get(session_id)
        if session is None:
            if self._closing or len(self._sessions) >= self.options.max_sessions:
                return None
            session = self._sessions[session_id] = _HttpSession(self, session_id, info)
        return session

    def existing(self, session_id: str) -> _HttpSession | None:
        return self._sessions.get(session_id)


class _SessionEndpoint:
    """ASGI endpoint for ``/<server>/<session>/<transport>`` over HTTP."""

    def __init__(self, server: SockJsServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._dispatch(request, send)
        if response is not None:
            await response(scope, receive, send)

    async def _dispatch(self, request: Request, send: Send) -> Response | None:
        server, params = self.server, request.path_params
        path = sockjs.parse_session_path(f"/{params['server']}/{params['session']}/{params['transport']}")
        if path is None:
            return PlainTextResponse("404 Error: Page not found\n", status_code=404)
        if not server.origin_allowed(request.headers.get("origin")):
            return Response(status_code=403)
        method, transport = request.method, path.transport
        if method == "OPTIONS" and transport.startswith("xhr"):
            return server.preflight(request, "OPTIONS, POST")
        if method != _METHODS[transport]:
            return Response(status_code=405, headers={"Allow": _METHODS[transport]})
        if transport == "websocket":
            return PlainTextResponse('Can "Upgrade" only to "WebSocket".', status_code=400)
        if transport == "xhr_send":
            return await self._xhr_send(request, path.session)
        session = server.session(path.session, _info(request, _RECEIVERS[transport]))
        if session is None:
            return PlainTextResponse("Server is closing or full.", status_code=503)
        await _Receiver(server, session, request, transport).run(send)
        return None

    async def _xhr_send(self, request: Request, session_id: str) -> Response:
        server = self.server
        headers = server.headers(request) | {"Cache-Control": NO_CACHE}
        session = server.existing(session_id)
        if session is None:
            return Response(status_code=404, headers=headers)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > server.options.max_message_bytes:
                    session.close_with(sockjs.MESSAGE_TOO_BIG)
                    return PlainTextResponse("Payload too large.", status_code=413, headers=headers)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            messages = sockjs.decode_client_payload(bytes(body), single_allowed=False)
        except PayloadError as exc:
            return PlainTextResponse(str(exc), status_code=500, headers=headers)
        await session.deliver(messages)
        # Firefox treats a 204 without a content type as XML and complains (sockjs-protocol).
        return Response(status_code=204, headers=headers, media_type="text/plain; charset=UTF-8")


class _Receiver:
    """One receiving HTTP response: polling (one batch of frames) or streaming (until the limit)."""

    def __init__(self, server: SockJsServer, session: _HttpSession, request: Request, transport: str) -> None:
        self.server, self.session, self.request = server, session, request
        self.eventsource = transport == "eventsource"
        self.polling = transport == "xhr"
        self.encode = sockjs.eventsource_chunk if self.eventsource else sockjs.xhr_chunk
        if transport == "xhr_streaming":
            self.prelude = sockjs.XHR_STREAMING_PRELUDE
        else:
            self.prelude = sockjs.EVENTSOURCE_PRELUDE if self.eventsource else b""

    async def run(self, send: Send) -> None:
        core, clock = self.session.core, self.server.clock
        attach = core.attach(clock())
        self.session.changed()
        media = "text/event-stream" if self.eventsource else "application/javascript; charset=UTF-8"
        headers: Mapping[str, str] = self.server.headers(self.request, eventsource=self.eventsource) | {
            "Cache-Control": NO_CACHE,
            "Content-Type": media,
            "X-Accel-Buffering": "no",  # nginx would otherwise hold streamed frames back
        }
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        interrupted = True
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
            first = self.prelude + self.encode(attach.frames)
            if not attach.accepted:
                interrupted = False
            else:
                interrupted = await self._pump(send, first, bool(attach.frames))
                first = b""
            if not interrupted:
                await send({"type": "http.response.body", "body": first, "more_body": False})
        finally:
            if attach.accepted:
                core.detach(clock(), interrupted=interrupted)
                self.session.changed()

    async def _pump(self, send: Send, first: bytes, has_frames: bool) -> bool:
        """Write frames until done; True if the client went away or stopped reading first."""
        writer = asyncio.create_task(self._write_frames(send, first, has_frames))
        watcher = asyncio.create_task(self._wait_disconnect())
        try:
            await asyncio.wait([writer, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.cancel()
            watcher.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
        if writer.cancelled():
            return True
        if (exc := writer.exception()) is not None:
            log.error("sockjs: receiver failed", exc_info=exc)
            return True
        return writer.result()

    async def _wait_disconnect(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass  # the (empty) request body of a receiver is discarded

    async def _write_frames(self, send: Send, chunk: bytes, has_frames: bool) -> bool:
        session, core, clock = self.session, self.session.core, self.server.clock
        written = 0
        while True:
            if chunk:
                try:
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    return True
                written += len(chunk)
            if has_frames and (self.polling or core.closing or written >= self.server.options.response_limit):
                return False
            session.news.clear()
            frames = core.poll(clock())
            if not frames:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, core.next_heartbeat_at() - clock())):
                        await session.news.wait()
                frames = core.poll(clock())
            chunk, has_frames = self.encode(frames), bool(frames)


def sockjs_routes(
    prefix: str,
    factory: HandlerFactory,
    *,
    heartbeat_s: float = 25.0,
    disconnect_delay_s: float = 5.0,
    allowed_origins: list[str] | None = None,
    max_message_bytes: int = 65536,
    max_queue: int = 1000,
    cookie_needed: bool = False,
    response_limit: int = 128 * 1024,
    max_sessions: int = 10_000,
    subprotocols: tuple[str, ...] = (),
    raw_at_prefix: bool = False,
) -> SockJsRoutes:
    """Routes serving SockJS under ``prefix``; ``.server`` on the result gives ``close_all()``."""
    origins = None
    if allowed_origins is not None and "*" not in allowed_origins:
        origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
    options = SockJsOptions(
        heartbeat_s=heartbeat_s,
        disconnect_delay_s=disconnect_delay_s,
        allowed_origins=origins,
        max_message_bytes=max_message_bytes,
        max_queue=max_queue,
        cookie_needed=cookie_needed,
        response_limit=response_limit,
        max_sessions=max_sessions,
        subprotocols=subprotocols,
        raw_at_prefix=raw_at_prefix,
    )
    return SockJsRoutes(SockJsServer(prefix, factory, options))
