"""Abuse limits: a token-bucket rate limiter (pure) and concurrent connections per client address (ASGI)."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from starlette.types import ASGIApp, Receive, Scope, Send


class TokenBuckets:
    """One bucket per key: ``burst`` tokens, refilled at ``rate_per_s``; the key set is bounded (LRU)."""

    def __init__(
        self, rate_per_s: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)

    def take(self, key: str) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)  # an evicted key starts again with a full bucket
        return wait


def limit_key(auth_mode: str, subject: str, client_host: str) -> str:
    """Whose bucket a request draws from: the viewer's subject, or its address when nobody is authenticated."""
    return f"addr:{client_host}" if auth_mode == "none" else subject


def refusals_counter(registry: CollectorRegistry | None) -> PromCounter:
    return PromCounter("hqgw_refusals", "Requests refused before reaching a viewer, by reason", ["reason"],
                       registry=registry)  # fmt: skip


class ClientConnectionLimit:
    """ASGI middleware: at most ``limit`` concurrent HTTP requests + WebSockets per client address."""

    def __init__(self, app: ASGIApp, limit: int, refusals: PromCounter | None = None) -> None:
        self.app = app
        self.limit = limit
        self._open: Counter[str] = Counter()
        self._refusals = refusals

    def open_from(self, host: str) -> int:
        return self._open[host]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.limit:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else "unknown"
        if self._open[host] >= self.limit:
            if self._refusals is not None:
                self._refusals.labels("too_many_connections").inc()
            await _refuse(scope, send, self.limit)
            return
        self._open[host] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    if scope["type"] == "websocket":
        # A close before accept: the server answers the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": "too many connections"})
        return
    body = orjson.dumps({"error": "too_many_connections",
                         "message": f"more than {limit} concurrent connections from one address"})  # fmt: skip
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"5"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
