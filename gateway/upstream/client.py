"""HTTP access to HQ: the conversation stream (httpx + httpx-sse), metadata and message submission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, SSEError

from gateway.backoff import Backoff as Backoff  # re-exported: its old home
from gateway.envelope import HqEvent
from gateway.errors import UpstreamFatal
from gateway.errors import UpstreamUnavailable as UpstreamUnavailable  # re-exported: its old home
from gateway.hqstate import HqState

# Statuses that retrying cannot fix: stop and tell the viewers (DESIGN: upstream).
FATAL_STATUSES = {401: "unauthorized", 403: "forbidden", 404: "conversation not found"}


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


class _Watchdog:
    """The dead-stream watchdog: no byte from HQ for ``idle_s`` while waiting for one cancels the read.

    One timer per stream, re-armed at most once per ``idle_s``, instead of httpx's per-read timeout,
    which builds an anyio cancel scope and a timer for every chunk (~15% of the gateway's CPU with
    1,000 live upstreams, py-spy). It fires only while the reader waits for bytes, never while the
    stream's consumer is busy (journaling, say).
    """

    __slots__ = ("_handle", "_idle_s", "_loop", "_task", "fired", "last", "reading")

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.last = self._loop.time()
        self.reading = True  # the request itself: waiting for the response head
        self.fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self.last + idle_s, self._check)

    def _check(self) -> None:
        due = self.last + self._idle_s
        if self.reading and self._loop.time() >= due and self._task is not None:
            self.fired = True
            self._handle = None
            self._task.cancel()
            return
        self._handle = self._loop.call_at(max(due, self._loop.time() + self._idle_s / 4), self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _WatchedStream(httpx.AsyncByteStream):
    """A response body stream that tells the watchdog when bytes arrive and when it waits for them."""

    def __init__(self, inner: httpx.AsyncByteStream, watchdog: _Watchdog) -> None:
        self._inner = inner
        self._watchdog = watchdog

    async def __aiter__(self) -> AsyncIterator[bytes]:
        watchdog, chunks = self._watchdog, self._inner.__aiter__()
        loop = asyncio.get_running_loop()
        while True:
            # The bound runs from when the reader starts waiting: time the consumer spent on the last
            # event (a slow journal append, say) is not silence from HQ.
            watchdog.last = max(watchdog.last, loop.time())
            watchdog.reading = True
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            finally:
                watchdog.reading = False
            watchdog.last = loop.time()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _StreamPools:
    """Conversation streams spread over small connection pools, at most ``per_pool`` streams each.

    httpcore scans every connection of its pool on each request and each response close, so one
    pool holding N long-lived streams made every (re)connect O(N): with 1,000 conversations the
    gateway spent seconds at 40-60% of a core just opening them (py-spy: _assign_requests_to_connections).
    """

    __slots__ = ("_make", "_per_pool", "_pools")

    def __init__(self, make: Callable[[], httpx.AsyncClient], per_pool: int = 32) -> None:
        self._make = make
        self._per_pool = per_pool
        self._pools: list[list[Any]] = []  # [client, open streams]

    def acquire(self) -> list[Any]:
        for pool in self._pools:
            if pool[1] < self._per_pool:
                break
        else:
            pool = [self._make(), 0]
            self._pools.append(pool)
        pool[1] += 1
        return pool

    @staticmethod
    def release(pool: list[Any]) -> None:
        pool[1] -= 1

    async def aclose(self) -> None:
        for client, _ in self._pools:
            await client.aclose()


class HqClient:
    """HTTP clients towards HQ, shared by every conversation of the process: one pooled client for
    requests, and streams spread over small pools (see ``_StreamPools``)."""

    def __init__(self, base_url: str, token: str, connect_timeout_s: float, idle_timeout_s: float) -> None:
        self._token = token
        self.state = HqState()  # what the service token last met at HQ (for /readyz)
        base_url = base_url.rstrip("/")
        # The read timeout is the dead-stream watchdog: any byte (keepalive comments too) resets it.
        timeout = httpx.Timeout(connect=connect_timeout_s, read=idle_timeout_s, write=10.0, pool=10.0)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)
        # At most this many requests in flight: 1,000 upstreams starting at once would otherwise open
        # 1,000 connections, each request scanning them all (see _StreamPools).
        self._requests = asyncio.Semaphore(32)
        tls = httpx.create_ssl_context()  # loaded once, shared by every stream pool

        self._idle_timeout_s = idle_timeout_s
        # Streams read without httpx's per-read timeout: _Watchdog bounds them instead.
        stream_timeout = httpx.Timeout(connect=connect_timeout_s, read=None, write=10.0, pool=10.0)

        def stream_client() -> httpx.AsyncClient:
            stream_limits = httpx.Limits(max_connections=None, max_keepalive_connections=4)
            return httpx.AsyncClient(base_url=base_url, timeout=stream_timeout, limits=stream_limits, verify=tls)

        self._streams = _StreamPools(stream_client)

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
        pool = self._streams.acquire()
        watchdog = _Watchdog(self._idle_timeout_s)
        try:
            async with pool[0].stream("GET", url, headers=headers, params=params) as response:
                watchdog.reading = False
                watchdog.last = asyncio.get_running_loop().time()
                self.state.answered(response.status_code)
                if response.status_code in FATAL_STATUSES:
                    raise UpstreamFatal(response.status_code, FATAL_STATUSES[response.status_code])
                if response.status_code != 200:
                    raise UpstreamUnavailable(f"HQ answered {response.status_code}")
                if isinstance(response.stream, httpx.AsyncByteStream):
                    response.stream = _WatchedStream(response.stream, watchdog)
                yield _events(EventSource(response))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watchdog.fired and task is not None and task.uncancel() == 0:
                raise UpstreamUnavailable(f"no bytes from HQ in {self._idle_timeout_s:g}s") from None
            raise
        except httpx.TimeoutException as exc:
            self.state.failed(f"no bytes from HQ in time ({type(exc).__name__})")
            raise UpstreamUnavailable(f"no bytes from HQ in time ({type(exc).__name__})") from None
        except (httpx.TransportError, SSEError) as exc:
            self.state.failed(f"{type(exc).__name__}: {exc}")
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            watchdog.stop()
            self._streams.release(pool)

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
            async with self._requests:
                response = await self._http.request(method, url, headers=headers, **kw)
        except httpx.HTTPError as exc:
            if token is None:
                self.state.failed(f"{type(exc).__name__}: {exc}")
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
        if token is None:  # a viewer's own credential (auth mode hq) says nothing about the service token
            self.state.answered(response.status_code)
        try:
            body = response.json()
        except ValueError:
            body = None
        return HqReply(response.status_code, body)

    async def close(self) -> None:
        await self._http.aclose()
        await self._streams.aclose()


async def _events(source: EventSource) -> AsyncIterator[HqEvent | RetryHint]:
    async for sse in source.aiter_sse():
        if sse.retry is not None:
            yield RetryHint(sse.retry / 1000)
        if sse.event == "message" and not sse.data and not sse.id:
            continue  # a retry-only or empty frame
        yield HqEvent(sse.event, decode_data(sse.data), sse.id or None)
