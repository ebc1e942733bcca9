"""Assembles the Starlette application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from gateway.api import bridge, conversation, health
from gateway.api.console import console_routes
from gateway.api.cors import ApiCors
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.limits import ClientConnectionLimit, TokenBuckets, refusals_counter
from gateway.metrics import metrics_endpoint
from gateway.runtime import Gateway
from gateway.transports.pipe import ConnectionInfo, Pipe
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
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


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
    guards = [
        Middleware(ClientConnectionLimit, limit=settings.max_connections_per_client, refusals=refusals),
        Middleware(ApiCors, allowed=auth.allowed_origins, refusals=refusals),
    ]
    app = Starlette(routes=[*routes(), *console_routes(), *stomp], lifespan=lifespan, middleware=guards)
    app.state.gateway = gw
    app.state.auth = auth
    app.state.submit_limiter = TokenBuckets(settings.submit_rate_per_s, settings.submit_burst)
    app.state.refusals = refusals
    return app
