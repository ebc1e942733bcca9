"""GET /api/v1/conversation/stream/{conversationId}: envelopes as SSE, resumable by seq."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.hub import SubscriberStale
from gateway.ids import BadRequest, conversation_id, seq_cursor
from gateway.protocols.sse import encode_comment, encode_event
from gateway.runtime import Gateway

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


async def stream_endpoint(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        conv = conversation_id(request.path_params["conversationId"])
        # EventSource sends Last-Event-ID on its reconnects; it supersedes the URL's since_seq.
        since = seq_cursor(request.headers.get("last-event-id"), "Last-Event-ID")
        if since is None:
            since = seq_cursor(request.query_params.get("since_seq"), "since_seq")
    except BadRequest as exc:
        return JSONResponse({"error": "bad_request", "message": str(exc)}, status_code=400)
    if gw.shutting_down.is_set():
        return JSONResponse({"error": "unavailable", "message": "shutting down"}, status_code=503)
    return StreamingResponse(_frames(gw, conv, since), media_type="text/event-stream", headers=SSE_HEADERS)


async def _frames(gw: Gateway, conv: str, since: int | None) -> AsyncIterator[bytes]:
    keepalive = gw.settings.sse_keepalive_s
    metrics = gw.metrics
    async with gw.upstreams.interest(conv):
        sub, notice = await gw.hub.subscribe(conv, since)
        metrics.viewers.labels("sse").inc()
        if since is not None:
            metrics.resumes.labels(notice.reason if notice else "exact").inc()
        try:
            # A first comment flushes the headers through proxies and tells the client it is live.
            yield encode_comment("hq-gateway stream")
            if notice is not None:
                yield encode_event(orjson.dumps(notice.as_dict()), event="stale")
            while True:
                try:
                    batch = await sub.next_batch(timeout=keepalive)
                except SubscriberStale as exc:
                    metrics.disconnects.labels(exc.reason).inc()
                    if exc.reason == "shutdown":
                        yield encode_comment("server shutting down; reconnect with Last-Event-ID")
                    else:
                        data = {"reason": exc.reason, "resumeFrom": exc.cursor}
                        yield encode_event(orjson.dumps(data), event="stale")
                    return
                if batch:
                    yield b"".join([env.sse for env in batch])
                    metrics.delivered.labels("sse").inc(len(batch))
                else:
                    yield b": keepalive\n\n"
        finally:
            metrics.viewers.labels("sse").dec()
            gw.hub.unsubscribe(sub)
