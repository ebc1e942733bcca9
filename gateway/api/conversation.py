"""REST: submit a turn, read the journal (paged) and the per-turn trace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Authenticator, Denied, Principal, denied_response
from gateway.envelope import Envelope
from gateway.errors import JournalConflict, JournalUnavailable
from gateway.ids import BadRequest, conversation_id, seq_cursor
from gateway.limits import TokenBuckets, limit_key
from gateway.runtime import Gateway
from gateway.trace import build_trace
from gateway.transports.sse_endpoint import activation_refused_response
from gateway.upstream.client import UpstreamUnavailable
from gateway.upstream.clustered import ClusteredConversation
from gateway.upstream.registry import Activation, ActivationRefused
from gateway.upstream.supervisor import UpstreamState

log = logging.getLogger("gateway.api")

MAX_BODY = 1 << 20
MAX_MESSAGE_CHARS = 100_000
TURN_HOLD_S = 900.0
MAX_PAGE = 1000


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise BadRequest(f"body larger than {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BadRequest(f"body larger than {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def authorized(request: Request, conv: str, *, reading: bool = True) -> Principal | Response:
    """The caller's principal for ``conv``, or the refusal to send back (401/403/503)."""
    auth: Authenticator = request.app.state.auth
    credential = auth.http_credential(request.headers, request.query_params)
    try:
        principal = await auth.authorize(credential, conv, request.query_params.get("scope"))
    except Denied as refusal:
        return denied_response(refusal)
    if reading:
        auth.audit_attach(principal, conv, "rest", request.client.host if request.client else "unknown")
    return principal


def _rate_limited(request: Request, principal: Principal) -> Response | None:
    """Token bucket per viewer (per client address when nobody is authenticated)."""
    auth: Authenticator = request.app.state.auth
    limiter: TokenBuckets = request.app.state.submit_limiter
    who = f"addr:{request.client.host if request.client else 'unknown'}" if auth.mode == "none" else principal.subject
    wait = limiter.take(who)
    if not wait:
        return None
    request.app.state.refusals.labels("rate_limited").inc()
    return JSONResponse(
        {"error": "rate_limited", "message": f"too many submissions; retry in {wait:.1f} s"},
        status_code=429,
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


def _who(request: Request, principal: Principal) -> str:
    auth: Authenticator = request.app.state.auth
    return limit_key(auth.mode, principal.subject, request.client.host if request.client else "unknown")


def _submission(body: dict[str, Any]) -> tuple[str, str, dict[str, Any], str | None, list[Any] | None]:
    if "conversationId" not in body:
        hint = " (not conversation_id)" if "conversation_id" in body else ""
        raise BadRequest(f"conversationId is missing{hint}: the conversation's UUID")
    conv = conversation_id(str(body["conversationId"]))
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        raise BadRequest("message must be a non-empty string")
    if len(message) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"message longer than {MAX_MESSAGE_CHARS} characters")
    params = body.get("inputParams") or {}
    if not isinstance(params, dict):
        raise BadRequest("inputParams must be an object")
    key = body.get("idempotencyKey")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise BadRequest("idempotencyKey must be a string of 1-200 characters")
    attachments = body.get("attachments")
    if attachments is not None and not isinstance(attachments, list):
        raise BadRequest("attachments must be a list")
    return conv, message, params, key, attachments


async def post_message(request: Request) -> Response:
    """Submit a turn; every answer counts once in hqgw_submissions_total{outcome}."""
    gw: Gateway = request.app.state.gateway
    try:
        response = await _submit(request, gw)
    except ClientDisconnect:
        # The caller hung up mid-body: nobody reads an answer, nothing was submitted.
        log.info("submission abandoned: client disconnected before the body was complete")
        gw.metrics.submissions.labels("client_gone").inc()
        return Response(status_code=400)
    gw.metrics.submissions.labels(_outcome(response)).inc()
    return response


def _outcome(response: Response) -> str:
    """A bounded label: accepted / idempotent, or the error code the caller was given."""
    try:
        body = orjson.loads(bytes(response.body))
    except orjson.JSONDecodeError:
        return "other"
    if response.status_code == 202:
        return "idempotent" if body.get("idempotent") else "accepted"
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) and code.isidentifier() and len(code) <= 40 else "other"


async def _submit(request: Request, gw: Gateway) -> Response:
    try:
        conv, message, params, key, attachments = _submission(await _json_body(request))
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    principal = await authorized(request, conv, reading=False)
    if isinstance(principal, Response):
        return principal
    if not principal.may_submit:
        return error(403, "forbidden", "this viewer's token does not allow message submission")
    if (limited := _rate_limited(request, principal)) is not None:
        return limited
    key = key or str(uuid.uuid4())
    try:
        upstream = gw.upstreams.hold(conv, "turn", who=_who(request, principal))
    except ActivationRefused as refusal:
        return activation_refused_response(refusal)
    released = False
    try:
        # Attach before posting (HQ streaming guide): HQ replays nothing to a fresh attach, so a turn
        # posted before the stream is live loses its first events, or all of them.
        attach_s = gw.settings.hq_attach_timeout_s
        live = await _wait_live(upstream, attach_s)
        if upstream.state is UpstreamState.FAILED:
            return error(502, "upstream_refused", "HQ refused this conversation's stream")
        if not live:
            # Nothing was posted to HQ nor journaled: retrying (same idempotencyKey) is safe.
            return JSONResponse(
                {"error": "upstream_not_ready", "message": f"HQ's stream of this conversation was not live within "
                 f"{attach_s:g} s; nothing was submitted, retry later"},
                status_code=503,
                headers={"Retry-After": str(max(1, math.ceil(attach_s)))},
            )  # fmt: skip
        upstream.turn_ended.clear()
        first_time = gw.remember_submission(conv, key)
        if first_time:
            try:
                await upstream.originate("gateway.user_input", {"message": message, "inputParams": params})
            except (JournalUnavailable, JournalConflict) as exc:
                # Nothing reached HQ: the same idempotencyKey may be retried as a first submission.
                gw.forget_submission(conv, key)
                code = "journal_unavailable" if isinstance(exc, JournalUnavailable) else "journal_busy"
                return JSONResponse(
                    {"error": code, "message": f"the turn could not be journaled ({exc}); nothing was submitted, "
                     "retry with the same idempotencyKey"},
                    status_code=503, headers={"Retry-After": "1"},
                )  # fmt: skip
        hq_body: dict[str, Any] = {"text": message, "idempotency_key": key}
        if attachments:
            hq_body["attachments"] = attachments
        try:
            # hq mode: HQ sees the viewer's own credential, never the gateway's, on a viewer's turn.
            reply = await gw.hq.post_message(conv, hq_body, key, token=principal.hq_token)
        except UpstreamUnavailable as exc:
            return error(502, "upstream_unavailable", f"HQ unreachable: {exc}")
        if reply.status not in (200, 201, 202) or not isinstance(reply.body, dict):
            status = reply.status if reply.status in (400, 401, 403, 404, 409, 422, 429) else 502
            return error(status, "upstream_rejected", f"HQ answered {reply.status}")
        gw.spawn(_hold_until_turn_ends(gw, conv, upstream.turn_ended), name=f"turn-hold:{conv}")
        if gw.bridge is not None:  # GATEWAY_BRIDGE_PIN=submitted bridges this conversation from now on
            await gw.bridge.pin_submitted(conv)
        released = True
        base = gw.settings.public_url or str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "accepted": bool(reply.body.get("accepted", True)),
                "idempotent": bool(reply.body.get("idempotent", False)),
                "conversationId": conv,
                "idempotencyKey": key,
                "streamUrl": f"{base.rstrip('/')}/api/v1/conversation/stream/{conv}",
                "stompDestination": f"/topic/convengine/audit/{conv}",
            },
            status_code=202,
        )
    finally:
        if not released:
            gw.upstreams.release(conv, "turn")


async def _wait_live(upstream: Activation, timeout: float) -> bool:
    """True once HQ's stream of the conversation is up; False when ``timeout`` passes or HQ refused it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # Cluster mode: "connected" on a process that does not hold the lease only says someone does;
        # the holder's stream must be up as well (HQ replays nothing to a fresh attach).
        if upstream.connected.is_set() and (
            not isinstance(upstream, ClusteredConversation) or await upstream.holder_live()
        ):
            return True
        remaining = deadline - loop.time()
        if upstream.state is UpstreamState.FAILED or remaining <= 0:
            return False
        if upstream.connected.is_set():
            await asyncio.sleep(min(0.1, remaining))
        else:  # polled: FAILED sets no event. The short timeout is caught here, not taken for the whole wait.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(upstream.connected.wait(), min(0.25, remaining))


async def _hold_until_turn_ends(gw: Gateway, conv: str, ended: asyncio.Event) -> None:
    """Keep the upstream open while a submitted turn runs, even with no viewer."""
    try:
        async with asyncio.timeout(TURN_HOLD_S):
            await ended.wait()
    except TimeoutError:
        pass
    finally:
        gw.upstreams.release(conv, "turn")


async def audit(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        conv = conversation_id(request.path_params["conversationId"])
        after = seq_cursor(request.query_params.get("after"), "after") or 0
        limit = _page_limit(request.query_params.get("limit"))
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    principal = await authorized(request, conv)
    if isinstance(principal, Response):
        return principal
    head = await gw.journal.head(conv)
    envs = await gw.journal.read(conv, after, limit)
    last = envs[-1].seq if envs else after
    body = b'{"conversationId":"%s","oldest":%d,"newest":%d,"nextAfter":%s,"items":[%s]}' % (
        conv.encode(),
        head.oldest,
        head.seq,
        str(last).encode() if last < head.seq else b"null",
        b",".join(_visible_bodies(envs, principal)),
    )
    return Response(body, media_type="application/json")


def _page_limit(raw: str | None) -> int:
    """``?limit=``: how many envelopes per page, 1 to MAX_PAGE (default 100)."""
    if raw is None:
        return 100
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}, got {raw[:40]!r}")
    return int(text)


async def _reader_of_path_conversation(request: Request) -> tuple[str, Principal] | Response:
    """The path's conversation id and the caller's principal for it, or the 400/401/403 to send."""
    try:
        conv = conversation_id(request.path_params["conversationId"])
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    principal = await authorized(request, conv)
    return principal if isinstance(principal, Response) else (conv, principal)


async def snapshot(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    target = await _reader_of_path_conversation(request)
    if isinstance(target, Response):
        return target
    conv, principal = target
    snap = await gw.hub.snapshot(conv, int(time.time() * 1000))
    return Response(snap.body if principal.scope.full else snap.body_for_user, media_type="application/json")


async def trace(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    target = await _reader_of_path_conversation(request)
    if isinstance(target, Response):
        return target
    conv, principal = target
    head = await gw.journal.head(conv)
    envs = await gw.journal.read(conv, max(0, head.oldest - 1), gw.settings.journal_max_events)
    turns = build_trace([orjson.loads(body) for body in _visible_bodies(envs, principal)])
    return JSONResponse({"conversationId": conv, "oldest": head.oldest, "newest": head.seq, "turns": turns})


def _visible_bodies(envs: list[Envelope], principal: Principal) -> list[bytes]:
    """What this viewer's scope may read: a user viewer skips hidden envelopes and gets stripped bodies."""
    if principal.scope.full:
        return [e.body for e in envs]
    return [e.body_for_user for e in envs if not e.hidden_from_user]
