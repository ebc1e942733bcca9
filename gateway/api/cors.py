"""CORS and the Origin allow-list for the REST and SSE routes (``/api/``); SockJS does its own."""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson
from prometheus_client import Counter
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.credentials import canonical_origin

API_PREFIX = "/api/"
ALLOW_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "Cache-Control"]


class ApiCors:
    """Browsers from an origin outside ``allowed`` (None: any) are refused with 403; others get CORS headers.

    With any origin allowed, responses carry ``Access-Control-Allow-Origin: *`` without credentials, so a
    browser never sends cookies cross-site; with an explicit list, credentials are allowed for it.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None, refusals: Counter | None = None) -> None:
        self.app = app
        self.allowed = allowed
        self._refusals = refusals
        self.cors = CORSMiddleware(
            app,
            allow_origins=["*"] if allowed is None else sorted(allowed),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=ALLOW_HEADERS,
            allow_credentials=allowed is not None,
            expose_headers=["Retry-After"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"origin", b"host")}
        origin = headers.get(b"origin")
        if origin is None:  # no CORS without an Origin (CORSMiddleware would pass it through too)
            await self.app(scope, receive, send)
            return
        if self.allowed is not None and not _permitted(origin, headers.get(b"host"), self.allowed):
            if self._refusals is not None:
                self._refusals.labels("origin_not_allowed").inc()
            body = orjson.dumps({"error": "origin_not_allowed", "message": "this Origin is not in the allow-list"})
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"), (b"vary", b"Origin")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.cors(scope, receive, send)


def _permitted(origin: str, host: str | None, allowed: frozenset[str]) -> bool:
    """Listed, or the gateway's own origin (its console's requests carry an Origin too)."""
    origin = canonical_origin(origin)
    return origin in allowed or (host is not None and urlsplit(origin).netloc == host.lower())
