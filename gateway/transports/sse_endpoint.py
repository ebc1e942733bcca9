"""GET /api/v1/conversation/stream/{conversationId}: envelopes as SSE, resumable by seq."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Callable

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Authenticator, Denied, Principal, denied_response
from gateway.delivery import Delivery, sse_frame, sse_user_frame
from gateway.errors import JournalUnavailable
from gateway.hub import SubscriberStale
from gateway.ids import BadRequest, conversation_id, seq_cursor
from gateway.limits import limit_key
from gateway.protocols.sse import encode_comment, encode_event
from gateway.transports.server import write_body_nowait_of
from gateway.transports.services import ViewerServices
from gateway.transports.sse_response import SseResponse
from gateway.upstream.registry import ActivationRefused

log = logging.getLogger("gateway.sse")

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


async def stream_endpoint(request: Request) -> Response:
    gw: ViewerServices = request.app.state.gateway
    try:
        conv = conversation_id(request.path_params["conversationId"])
        # EventSource sends Last-Event-ID on its reconnects; it supersedes the URL's since_seq.
        since = seq_cursor(request.headers.get("last-event-id"), "Last-Event-ID")
        if since is None:
            since = seq_cursor(request.query_params.get("since_seq"), "since_seq")
        snapshot = _choice(request.query_params.get("snapshot"), "snapshot", ("turn",))
        coalesce = _choice(request.query_params.get("coalesce"), "coalesce", ("true", "false")) != "false"
    except BadRequest as exc:
        return JSONResponse({"error": "bad_request", "message": str(exc)}, status_code=400)
    if gw.shutting_down.is_set():
        return JSONResponse({"error": "unavailable", "message": "shutting down"}, status_code=503)
    auth: Authenticator = request.app.state.auth
    credential = auth.http_credential(request.headers, request.query_params)
    try:
        principal = await auth.authorize(credential, conv, request.query_params.get("scope"))
    except Denied as refusal:
        return denied_response(refusal)
    auth.audit_attach(principal, conv, "sse", f"{request.client.host}" if request.client else "unknown")
    hook = _AbortHook()
    client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    request_id = _request_id(request.headers.get("x-request-id"))
    hook.label = f"conversation={conv} request={request_id} client={client} subject={principal.subject}"
    hook.write_nowait = write_body_nowait_of(request.scope)
    try:  # starting the conversation's upstream is bounded: refused before the stream begins
        who = limit_key(auth.mode, principal.subject, request.client.host if request.client else "unknown")
        gw.upstreams.reserve(conv, who)  # the stream's own interest holds it from its first frame on
    except ActivationRefused as refusal:
        return activation_refused_response(refusal)
    frames = _frames(gw, conv, since, principal, hook, snapshot=snapshot is not None and since is None,
                     coalesce=coalesce)  # fmt: skip
    response = hook.response = SseResponse(frames, SSE_HEADERS)
    return response  # type: ignore[return-value]


def activation_refused_response(refusal: ActivationRefused) -> JSONResponse:
    """429 naming the limit, with Retry-After (SSE attach and REST submit)."""
    return JSONResponse(
        {"error": refusal.code, "message": refusal.message, "limit": refusal.setting},
        status_code=429,
        headers={"Retry-After": str(max(1, math.ceil(refusal.retry_after_s)))},
    )


class _AbortHook:
    """Lets a subscriber cut loose while its writer is stuck on a full socket end the response."""

    response: SseResponse | None = None

    def __init__(self) -> None:
        self.aborted_reason: str | None = None
        self.label = ""
        self.write_nowait: Callable[[bytes], bool] | None = None

    def __call__(self, reason: str) -> None:
        if self.response is not None and self.response.abort(only_if_writing=True):
            self.aborted_reason = reason


def _request_id(raw: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh one (logs only, never trusted)."""
    if raw and len(raw) <= 64 and raw.replace("-", "").replace("_", "").isalnum():
        return raw
    return uuid.uuid4().hex[:12]


def _choice(raw: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if raw is not None and raw not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
    return raw


def _expired(resume_from: int) -> bytes:
    data = {"error": "token_expired", "message": "the viewer's token expired: reconnect with a fresh token",
            "resumeFrom": resume_from}  # fmt: skip
    return encode_event(orjson.dumps(data), event="error")


async def _frames(
    gw: ViewerServices, conv: str, since: int | None, principal: Principal, hook: _AbortHook, *, snapshot: bool,
    coalesce: bool,
) -> AsyncGenerator[bytes, None]:  # fmt: skip
    keepalive = gw.settings.sse_keepalive_s
    user = not principal.scope.full
    expires_at = principal.expires_at
    metrics = gw.metrics
    delivered, live = metrics.delivered.labels("sse"), metrics.live_latency("sse")
    async with gw.upstreams.interest(conv):
        first: bytes = b""
        try:
            if snapshot:
                sub, snap = await gw.hub.subscribe_with_snapshot(conv, int(time.time() * 1000), coalesce=coalesce)
                notice, first = None, sse_frame(snap, user)
            else:
                sub, notice = await gw.hub.subscribe(conv, since, coalesce=coalesce)
        except JournalUnavailable as exc:
            # Told, never a silent close: the viewer retries with the cursor it had.
            log.warning("sse attach refused %s: %s", hook.label, exc)
            metrics.disconnects.labels("unavailable").inc()
            yield encode_event(orjson.dumps(SubscriberStale("unavailable", since or 0).sse_data()[1]), event="error")
            return
        sub.on_fail = hook
        metrics.viewers.labels("sse").inc()
        seen = gw.presence.attach(conv, "sse", principal.subject)
        log.info("sse attach %s since=%s snapshot=%s cursor=%d", hook.label, since, snapshot, sub.cursor)
        outcome = "client gone"
        if since is not None:
            metrics.resumes.labels(notice.reason if notice else "exact").inc()
        try:
            # A first comment flushes the headers through proxies and tells the client it is live.
            yield encode_comment("hq-gateway stream")
            if notice is not None:
                yield encode_event(orjson.dumps(notice.as_dict()), event="stale")
            if first:
                yield first
            # One SSE frame per scope, shared by every viewer of the conversation.
            delivery = Delivery(sub, user, gw.hub.frames(conv, ("sse", user)), sse_user_frame if user else sse_frame,
                                delivered, live, hook.write_nowait)  # fmt: skip
            delivery.attach()
            while True:
                timeout = keepalive
                if expires_at is not None:
                    timeout = min(keepalive, expires_at - time.time())
                    if timeout <= 0:  # the connection ends when its token does
                        outcome = "token expired"
                        metrics.disconnects.labels("token_expired").inc()
                        yield _expired(sub.cursor)
                        return
                try:
                    batch = await sub.next_batch(timeout=timeout)
                except SubscriberStale as exc:
                    outcome = f"cut loose: {exc.reason}"
                    metrics.disconnects.labels(exc.reason).inc()
                    if exc.reason == "shutdown":
                        yield encode_comment("server shutting down; reconnect with Last-Event-ID")
                    else:
                        event, data = exc.sse_data()
                        yield encode_event(orjson.dumps(data), event=event)
                    return
                except Exception:
                    log.exception("sse delivery failed %s", hook.label)
                    outcome = "cut loose: internal"
                    metrics.disconnects.labels("internal").inc()
                    event, data = SubscriberStale("internal", sub.cursor).sse_data()
                    yield encode_event(orjson.dumps(data), event=event)
                    return
                if batch:
                    chunks, shown = delivery.prepare(batch)
                    if chunks:
                        yield b"".join(chunks)
                    delivery.count(batch, shown)
                elif expires_at is None or time.time() < expires_at:
                    yield b": keepalive\n\n"
        finally:
            if hook.aborted_reason is not None:  # cut loose mid-write: the except above never ran
                metrics.disconnects.labels(hook.aborted_reason).inc()
                outcome = f"cut loose mid-write: {hook.aborted_reason}"
            log.info("sse detach %s cursor=%d (%s)", hook.label, sub.cursor, outcome)
            metrics.viewers.labels("sse").dec()
            gw.presence.detach(seen)
            gw.hub.unsubscribe(sub)
