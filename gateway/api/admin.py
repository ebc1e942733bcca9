"""REST for presence and operators: who watches a conversation, every active conversation, and disconnect.

DESIGN "Presence and admin": the same answer from every process sharing one Redis. Presence may be
read by anyone allowed to watch the conversation (subjects for ``admin`` scope only); the admin list
and disconnect need ``admin`` scope outside auth mode ``none``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.exceptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.conversation import authorized, error
from gateway.auth import Authenticator, Denied, Principal, Scope, denied_response
from gateway.ids import BadRequest, conversation_id, seq_cursor
from gateway.journal.base import Journal
from gateway.journal.redis import JournalUnavailable
from gateway.presence import Entry, iso_ms
from gateway.runtime import Gateway

DEFAULT_PAGE = 100
MAX_PAGE = 1000
JOURNAL_READS = 16
UNAVAILABLE = (JournalUnavailable, redis.exceptions.RedisError, OSError, TimeoutError)


def _unavailable() -> JSONResponse:
    return JSONResponse({"error": "unavailable", "message": "presence store (Redis) unreachable; retry shortly"},
                        status_code=503, headers={"Retry-After": "1"})  # fmt: skip


async def _admin(request: Request, conv: str | None) -> Principal | Response:
    """The caller when it holds ``admin`` scope (anyone in auth mode none); else its 401/403 JSON."""
    auth: Authenticator = request.app.state.auth
    credential = auth.http_credential(request.headers, request.query_params)
    try:
        principal = await (auth.authorize(credential, conv) if conv else auth.connect(credential))
    except Denied as refusal:
        return denied_response(refusal)
    if auth.mode == "none" and principal is not None:
        return principal
    if principal is None or principal.scope is not Scope.ADMIN:
        return error(403, "forbidden", "the admin API needs an admin-scope credential")
    return principal


async def presence(request: Request) -> Response:
    """GET /api/v1/conversation/presence/{conversationId}: viewers on every process, by transport."""
    gw: Gateway = request.app.state.gateway
    try:
        conv = conversation_id(request.path_params["conversationId"])
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    principal = await authorized(request, conv, reading=False)
    if isinstance(principal, Response):
        return principal
    auth: Authenticator = request.app.state.auth
    try:
        seen = await gw.presence.conversation(conv)
    except UNAVAILABLE:
        return _unavailable()
    return JSONResponse(seen.as_dict(with_subjects=auth.mode == "none" or principal.scope is Scope.ADMIN))


async def list_conversations(request: Request) -> Response:
    """GET /api/v1/admin/conversations[?limit=&cursor=]: every active conversation of the cluster, paged."""
    gw: Gateway = request.app.state.gateway
    try:
        limit = seq_cursor(request.query_params.get("limit"), "limit") or DEFAULT_PAGE
        raw_cursor = request.query_params.get("cursor")
        after = conversation_id(raw_cursor) if raw_cursor else None
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    limit = max(1, min(limit, MAX_PAGE))
    principal = await _admin(request, None)
    if isinstance(principal, Response):
        return principal
    try:
        merged = await gw.presence.conversations()
        ids = sorted(c for c in merged if principal.may_view(c) and (after is None or c > after))
        page = ids[:limit]
        rows = await _rows(gw.journal, [(conv, merged[conv]) for conv in page])
    except UNAVAILABLE:
        return _unavailable()
    return JSONResponse({"conversations": rows, "next": page[-1] if len(ids) > limit else None})


async def disconnect_viewers(request: Request) -> Response:
    """DELETE /api/v1/admin/conversations/{id}/viewers: end its viewers on every process, each told why."""
    gw: Gateway = request.app.state.gateway
    try:
        conv = conversation_id(request.path_params["conversationId"])
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    principal = await _admin(request, conv)
    if isinstance(principal, Response):
        return principal
    try:
        ended = await gw.presence.disconnect(conv)
    except UNAVAILABLE:
        # This process's viewers are already gone; the others could not be told.
        message = "viewers on this process were disconnected, but Redis is unreachable: other processes were not told"
        return JSONResponse({"error": "unavailable", "message": message}, status_code=503)
    return JSONResponse({"disconnected": ended})


async def _rows(journal: Journal, entries: list[tuple[str, Entry]]) -> list[dict[str, Any]]:
    """The page's rows, their journal heads read ``JOURNAL_READS`` at a time (a page may hold 1,000)."""
    gate = asyncio.Semaphore(JOURNAL_READS)

    async def row(conv: str, entry: Entry) -> dict[str, Any]:
        async with gate:
            return await _row(journal, conv, entry)

    return list(await asyncio.gather(*(row(conv, entry) for conv, entry in entries)))


async def _row(journal: Journal, conv: str, entry: Entry) -> dict[str, Any]:
    by_transport = {t: n for t, n in sorted(entry.get("t", {}).items()) if n > 0}
    upstream: dict[str, Any] = entry.get("u") or {"state": "idle", "holder": None}
    head = await journal.head(conv)
    turn: dict[str, Any] = {"number": upstream.get("turn"), "running": bool(upstream.get("running")),
                            "ttftMs": upstream.get("ttftMs")}  # fmt: skip
    if turn["number"] is None and head.exists and not head.empty:  # no lease holder: the journal knows the turn
        last = await journal.read(conv, head.seq - 1, 1)
        if last:
            meta = last[0].as_dict()["payload"].get("_meta", {})
            turn["number"], turn["running"] = meta.get("turn"), meta.get("state") == "RUNNING"
    last_event_at, connected_since = upstream.get("lastEventAt"), upstream.get("connectedSince")
    return {
        "conversationId": conv,
        "viewers": sum(by_transport.values()),
        "byTransport": by_transport,
        "upstream": {
            "state": upstream["state"],
            "holder": upstream.get("holder"),
            "reconnects": upstream.get("reconnects", 0),
            "lastEventAgeMs": None if last_event_at is None else max(0, int(time.time() * 1000) - last_event_at),
            "connectedSince": None if connected_since is None else iso_ms(connected_since),
        },
        "journal": {"oldest": head.oldest, "newest": head.seq}
        if head.exists and not head.empty
        else {"oldest": None, "newest": None},
        "turn": turn,
    }
