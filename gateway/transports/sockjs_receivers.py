"""SockJS over HTTP: the ``/<server>/<session>/<transport>`` endpoint and its receiving responses.

xhr_send delivers a client's messages; xhr (polling), xhr_streaming and eventsource are receivers
that write the session's frames until their transport says the response is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.protocols import sockjs
from gateway.protocols.sockjs import PayloadError
from gateway.transports.pipe import ConnectionInfo, connection_info
from gateway.transports.sockjs_options import SockJsOptions
from gateway.transports.sockjs_session import HttpSession
from gateway.transports.websocket_pipe import SEND_TIMEOUT_S

log = logging.getLogger(__name__)

NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
_RECEIVERS = {"xhr": "xhr-polling", "xhr_streaming": "xhr-streaming", "eventsource": "eventsource"}
_METHODS = {"xhr": "POST", "xhr_send": "POST", "xhr_streaming": "POST", "eventsource": "GET", "websocket": "GET"}


class SessionService(Protocol):
    """What the HTTP transports need from the SockJS service: its sessions and its HTTP answers."""

    options: SockJsOptions
    clock: Callable[[], float]

    def session(self, session_id: str, info: ConnectionInfo) -> HttpSession | None: ...

    def existing(self, session_id: str) -> HttpSession | None: ...

    def origin_allowed(self, origin: str | None) -> bool: ...

    def headers(self, conn: HTTPConnection, *, eventsource: bool = False) -> dict[str, str]: ...

    def preflight(self, request: Request, methods: str) -> Response: ...


class SessionEndpoint:
    """ASGI endpoint for ``/<server>/<session>/<transport>`` over HTTP."""

    def __init__(self, server: SessionService) -> None:
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
        session = server.session(path.session, connection_info(request, _RECEIVERS[transport]))
        if session is None:
            return PlainTextResponse("Server is closing or full.", status_code=503)
        await Receiver(server, session, request, transport).run(send)
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


class Receiver:
    """One receiving HTTP response: polling (one batch of frames) or streaming (until the limit)."""

    def __init__(self, server: SessionService, session: HttpSession, request: Request, transport: str) -> None:
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
