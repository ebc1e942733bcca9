"""Assembles the Starlette application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from gateway.api import conversation, health
from gateway.config import Settings
from gateway.metrics import metrics_endpoint
from gateway.runtime import Gateway
from gateway.transports.sse_endpoint import stream_endpoint


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/conversation/stream/{conversationId}", stream_endpoint, methods=["GET"]),
        Route("/api/v1/conversation/message", conversation.post_message, methods=["POST"]),
        Route("/api/v1/conversation/audit/{conversationId}", conversation.audit, methods=["GET"]),
        Route("/api/v1/conversation/audit/{conversationId}/trace", conversation.trace, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


def create_app(settings: Settings, gateway: Gateway | None = None) -> Starlette:
    gw = gateway or Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await gw.close()

    app = Starlette(routes=routes(), lifespan=lifespan)
    app.state.gateway = gw
    return app
