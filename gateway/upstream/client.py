"""HTTP access to HQ: the conversation stream (httpx + httpx-sse), metadata and message submission."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, SSEError

from gateway.envelope import HqEvent
from gateway.errors import GatewayError, UpstreamFatal

# Statuses that retrying cannot fix: stop and tell the viewers (DESIGN: upstream).
FATAL_STATUSES = {401: "unauthorized", 403: "forbidden", 404: "conversation not found"}


class UpstreamUnavailable(GatewayError):
    """A transient failure: connection refused, 5xx, wrong content type, stream cut or stalled."""


@dataclass(frozen=True, slots=True)
class HqReply:
    """A non-streaming HQ answer."""

    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class RetryHint:
    """The upstream ``retry:`` field: the reconnect delay HQ asks for, in seconds."""

    delay_s: float


def decode_data(raw: str) -> Any:
    """HQ data is one line of JSON; anything else is kept as the raw string, never dropped."""
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return raw


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog), randomness injected."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self.attempt = 0
        self.floor_s = 0.0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 40))
        self.attempt += 1
        return max(self.floor_s, ceiling * float(self._rng()))

    def reset(self) -> None:
        self.attempt = 0


class HqClient:
    """One pooled HTTP client towards HQ, shared by every conversation of the process."""

    def __init__(self, base_url: str, token: str, connect_timeout_s: float, idle_timeout_s: float) -> None:
        self._token = token
        # The read timeout is the dead-stream watchdog: any byte (keepalive comments too) resets it.
        timeout = httpx.Timeout(connect=connect_timeout_s, read=idle_timeout_s, write=10.0, pool=10.0)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, limits=limits)

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self._token}"}

    @asynccontextmanager
    async def open_stream(
        self, conversation_id: str, cursor: str | None
    ) -> AsyncIterator[AsyncIterator[HqEvent | RetryHint]]:
        """Open the conversation stream, resuming after ``cursor``; yields an iterator of events."""
        headers = self._auth(None) | {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        params: dict[str, str] = {}
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
            if cursor.isdigit():
                params["since_seq"] = cursor
        url = f"/v1/api/conversations/{conversation_id}/stream"
        try:
            async with self._http.stream("GET", url, headers=headers, params=params) as response:
                if response.status_code in FATAL_STATUSES:
                    raise UpstreamFatal(response.status_code, FATAL_STATUSES[response.status_code])
                if response.status_code != 200:
                    raise UpstreamUnavailable(f"HQ answered {response.status_code}")
                yield _events(EventSource(response))
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(f"no bytes from HQ in time ({type(exc).__name__})") from None
        except (httpx.TransportError, SSEError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def get_conversation(self, conversation_id: str, token: str | None = None) -> HqReply:
        url = f"/v1/api/conversations/{conversation_id}"
        return await self._request("GET", url, token=token)

    async def post_message(
        self, conversation_id: str, body: dict[str, Any], idempotency_key: str, token: str | None = None
    ) -> HqReply:
        url = f"/v1/api/conversations/{conversation_id}/messages"
        headers = {"Idempotency-Key": idempotency_key}
        return await self._request("POST", url, token=token, json=body, headers=headers)

    async def _request(self, method: str, url: str, *, token: str | None, **kw: Any) -> HqReply:
        headers = self._auth(token) | kw.pop("headers", {})
        try:
            response = await self._http.request(method, url, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        return HqReply(response.status_code, body)

    async def close(self) -> None:
        await self._http.aclose()


async def _events(source: EventSource) -> AsyncIterator[HqEvent | RetryHint]:
    async for sse in source.aiter_sse():
        if sse.retry is not None:
            yield RetryHint(sse.retry / 1000)
        if sse.event == "message" and not sse.data and not sse.id:
            continue  # a retry-only or empty frame
        yield HqEvent(sse.event, decode_data(sse.data), sse.id or None)
