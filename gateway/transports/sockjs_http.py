"""SockJS on Starlette: ``/info``, the websocket, xhr, xhr_streaming and eventsource transports, raw ``/websocket``.

The protocol lives in ``gateway.protocols.sockjs``; this module holds one service's routes, its
sessions and its shutdown. The WebSocket transports are in ``websocket_endpoint``, the HTTP ones in
``sockjs_receivers``. ``iframe*.html`` is not served (404): it only exists for the iframe-*
transports that browsers without CORS need; sockjs-client 1.6 in any current browser uses CORS for
``/info`` and for every transport here.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import secrets
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Scope

from gateway.protocols import sockjs
from gateway.transports.pipe import ConnectionInfo, HandlerFactory
from gateway.transports.sockjs_options import SockJsOptions
from gateway.transports.sockjs_receivers import NO_CACHE, SessionEndpoint
from gateway.transports.sockjs_session import HttpSession
from gateway.transports.websocket_endpoint import WebSocketEndpoint, websocket_app

__all__ = ["SockJsOptions", "SockJsRoutes", "SockJsServer", "sockjs_routes"]

ONE_YEAR_S = 365 * 24 * 3600
SHUTDOWN_TIMEOUT_S = 5.0
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")


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
        self._sessions: dict[str, HttpSession] = {}
        self._sockets = WebSocketEndpoint(factory, self.options, clock=clock)
        self._closing = False

    @property
    def connection_count(self) -> int:
        return len(self._sessions) + len(self._sockets.sockets)

    def routes(self) -> list[BaseRoute]:
        p = self.prefix
        raw = [WebSocketRoute(p or "/", self._sockets.raw)] if self.options.raw_at_prefix else []
        return [
            *raw,
            Route(p or "/", self._greeting, methods=["GET"]),
            Route(p + "/", self._greeting, methods=["GET"]),
            Route(p + "/info", self._info, methods=["GET", "OPTIONS"]),
            WebSocketRoute(p + "/websocket", self._sockets.raw),
            WebSocketRoute(p + "/{server}/{session}/websocket", self._sockets.sockjs),
            Route(p + "/{server}/{session}/{transport}", SessionEndpoint(self)),
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
            return websocket_app(self._sockets.raw, {})
        parts = rest.split("/")
        if len(parts) == 4 and parts[0] == "" and parts[3] == "websocket" and parts[1] and parts[2]:
            return websocket_app(self._sockets.sockjs, {"server": parts[1], "session": parts[2]})
        return None

    def forget(self, session: HttpSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def close_all(self) -> None:
        """Shutdown: refuse new sessions, close every one with Go away! (1001), wait (bounded)."""
        self._closing = True
        sessions = list(self._sessions.values())
        for session in sessions:
            session.terminate()
        await asyncio.gather(self._sockets.close_all(SHUTDOWN_TIMEOUT_S), self._expire(sessions))

    @staticmethod
    async def _expire(sessions: list[HttpSession]) -> None:
        tasks = [s.task for s in sessions]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- HTTP helpers -------------------------------------------------------------------------

    def origin_allowed(self, origin: str | None) -> bool:
        return self.options.origin_allowed(origin)

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

    # -- HTTP session transports -----------------------------------------------------------------

    def session(self, session_id: str, info: ConnectionInfo) -> HttpSession | None:
        """The live session with this id, created if absent; None when no more may be opened."""
        session = self._sessions.get(session_id)
        if session is None:
            if self._closing or len(self._sessions) >= self.options.max_sessions:
                return None
            session = self._sessions[session_id] = HttpSession(self, session_id, info)
        return session

    def existing(self, session_id: str) -> HttpSession | None:
        return self._sessions.get(session_id)


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
