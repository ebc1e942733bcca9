"""Assembles the Starlette application and its lifespan."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import admin, bridge, conversation, health
from gateway.api.console import console_routes
from gateway.api.cors import ApiCors
from gateway.auth import Authenticator
from gateway.clientaddr import ClientAddress, ForwardedClient, parse_trusted
from gateway.config import Settings
from gateway.limits import ClientConnectionLimit, TokenBuckets, refusals_counter
from gateway.metrics import metrics_endpoint
from gateway.runtime import Gateway
from gateway.transports.pipe import ConnectionInfo, Pipe
from gateway.transports.server_hooks import HOOKS, RequestHeadLimit, hooks_for
from gateway.transports.sockjs_http import sockjs_routes
from gateway.transports.sse_endpoint import stream_endpoint
from gateway.transports.stomp_connection import StompConnection

STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/conversation/stream/{conversationId}", stream_endpoint, methods=["GET"]),
        Route("/api/v1/conversation/message", conversation.post_message, methods=["POST"]),
        Route("/api/v1/conversation/audit/{conversationId}", conversation.audit, methods=["GET"]),
        Route("/api/v1/conversation/audit/{conversationId}/trace", conversation.trace, methods=["GET"]),
        Route("/api/v1/conversation/audit/{conversationId}/snapshot", conversation.snapshot, methods=["GET"]),
        Route("/api/v1/bridge/conversations", bridge.list_pins, methods=["GET"]),
        Route("/api/v1/bridge/conversations/{conversationId}", bridge.conversation_pin, methods=bridge.PIN_METHODS),
        Route("/api/v1/conversation/presence/{conversationId}", admin.presence, methods=["GET"]),
        Route("/api/v1/admin/conversations", admin.list_conversations, methods=["GET"]),
        Route("/api/v1/admin/conversations/{conversationId}/viewers", admin.disconnect_viewers, methods=["DELETE"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


STREAM_PATH = re.compile(r"^/api/v1/conversation/stream/([^/]+)$")


class GatewayApp(Starlette):
    """Starlette, with the long-lived streams dispatched ahead of its router and exception layers.

    An SSE response or a WebSocket lives as long as its viewer, and each ASGI layer it passes keeps
    a coroutine frame alive that long: ~4.5 KiB per idle viewer in Starlette's error, exception,
    router and route layers. Streams go straight to their endpoints behind the same guards
    (connection limit, origin check); every other request goes through Starlette as usual.
    """

    def __init__(
        self, *, guards: Callable[[ASGIApp], ASGIApp], streams: Callable[[Scope], ASGIApp | None], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._streams = streams
        self._guarded = guards(self._dispatch)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["app"] = self
            await self._guarded(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: the awaitable it returns is awaited by the guard, one frame fewer per stream.
        stream = self._streams(scope)
        if stream is not None:
            return stream(scope, receive, send)
        return super().__call__(scope, receive, send)


ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, missing file) answer JSON like every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = ERROR_CODES.get(exc.status_code, "http_error")
    message = exc.detail
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such resource: {request.url.path[:200]}"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"{request.method[:20]} is not allowed on {request.url.path[:200]}"
    return JSONResponse({"error": code, "message": message}, status_code=exc.status_code, headers=exc.headers)


async def _sse_app(scope: Scope, receive: Receive, send: Send) -> None:
    response = await stream_endpoint(Request(scope, receive))
    await response(scope, receive, send)


def create_app(settings: Settings, gateway: Gateway | None = None) -> Starlette:
    gw = gateway or Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        if gw.bridge is not None:
            await gw.bridge.start()
        try:
            yield
        finally:
            if gw.bridge is not None:
                await gw.bridge.stop()  # while upstreams and journal still run: flush, then disconnect
            await gw.close()

    auth = Authenticator(settings, gw.hq, gw.metrics.registry)
    refusals = refusals_counter(gw.metrics.registry)

    async def stomp_factory(pipe: Pipe, info: ConnectionInfo) -> StompConnection:
        return StompConnection(gw, pipe, info, auth=auth)

    origins = [o.strip() for o in settings.allowed_origins.split(",") if o.strip()]
    stomp = sockjs_routes(
        "/ws-convengine",
        stomp_factory,
        heartbeat_s=settings.sockjs_heartbeat_s,
        disconnect_delay_s=settings.sockjs_disconnect_delay_s,
        allowed_origins=origins,
        max_message_bytes=settings.stomp_max_frame_bytes,
        max_queue=settings.queue_max_messages,
        subprotocols=STOMP_SUBPROTOCOLS,
        raw_at_prefix=True,
    )
    gw.on_drain.append(stomp.server.close_all)

    hooks = hooks_for(settings)

    def guards(inner: ASGIApp) -> ASGIApp:
        limited: ASGIApp = ApiCors(inner, allowed=auth.allowed_origins, refusals=refusals)
        if not hooks.active:  # otherwise the HTTP protocol hook bounds heads as they arrive
            limited = RequestHeadLimit(limited, settings.max_header_bytes)
        limit = ClientConnectionLimit(limited, limit=settings.max_connections_per_client, refusals=refusals)
        return ForwardedClient(limit, ClientAddress(parse_trusted(settings.trusted_proxies)))

    def streams(scope: Scope) -> ASGIApp | None:
        if scope["type"] == "websocket":
            return stomp.server.websocket_endpoint(scope)
        if scope["method"] == "GET" and (match := STREAM_PATH.match(scope["path"])) is not None:
            scope["path_params"] = {"conversationId": match.group(1)}
            return _sse_app
        return None

    app = GatewayApp(routes=[*routes(), *console_routes(), *stomp], lifespan=lifespan, guards=guards, streams=streams,
                     exception_handlers={HTTPException: http_error})  # fmt: skip
    app.state.gateway = gw
    app.state.server_hooks = hooks
    for hook in HOOKS:
        gw.metrics.server_hooks.labels(hook).set(int(hooks.active))
    app.state.auth = auth
    app.state.submit_limiter = TokenBuckets(settings.submit_rate_per_s, settings.submit_burst)
    app.state.refusals = refusals
    return app
