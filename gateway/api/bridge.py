"""Admin REST for the broker bridge: list, inspect, pin and unpin conversations."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Authenticator, Denied, Scope, denied_response
from gateway.bridge.relay import Bridge, BridgeStopping
from gateway.bridge.store import PinKind
from gateway.ids import BadRequest, conversation_id, seq_cursor
from gateway.runtime import Gateway


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _bridge(request: Request) -> Bridge | None:
    gw: Gateway = request.app.state.gateway
    return gw.bridge


PIN_METHODS = ["GET", "PUT", "DELETE"]
DISABLED = (503, "bridge_disabled", "no broker bridge: GATEWAY_BRIDGE_URL is not set")


async def _refused(request: Request, conv: str | None) -> Response | None:
    """Bridge administration needs an admin-scope credential (any caller in auth mode none)."""
    auth: Authenticator = request.app.state.auth
    if auth.mode == "none":
        return None
    credential = auth.http_credential(request.headers, request.query_params)
    try:
        principal = await (auth.authorize(credential, conv) if conv else auth.connect(credential))
    except Denied as refusal:
        return denied_response(refusal)
    if principal is None or principal.scope is not Scope.ADMIN:
        return _error(403, "forbidden", "bridge administration needs an admin-scope credential")
    return None


async def _target(request: Request, *, with_since: bool = False) -> tuple[Bridge, str, int | None] | Response:
    """The bridge, the conversation id (and ``?since_seq`` when asked) of a per-conversation call, or its refusal."""
    bridge = _bridge(request)
    if bridge is None:
        return _error(*DISABLED)
    try:
        conv = conversation_id(request.path_params["conversationId"])
        since = seq_cursor(request.query_params.get("since_seq"), "since_seq") if with_since else None
    except BadRequest as exc:
        return _error(400, "bad_request", str(exc))
    if (refusal := await _refused(request, conv)) is not None:
        return refusal
    return bridge, conv, since


async def list_pins(request: Request) -> Response:
    """GET /api/v1/bridge/conversations: every pin with its cursor and lag."""
    bridge = _bridge(request)
    if bridge is None:
        return _error(*DISABLED)
    if (refusal := await _refused(request, None)) is not None:
        return refusal
    body = {**bridge.readiness()["detail"], "conversations": [p.view() for p in bridge.pins()]}
    return JSONResponse(body)


async def get_pin(request: Request) -> Response:
    """GET /api/v1/bridge/conversations/{id}: one pin, 404 when the conversation is not bridged."""
    target = await _target(request)
    if isinstance(target, Response):
        return target
    bridge, conv, _ = target
    pinned = bridge.get(conv)
    if pinned is None:
        return _error(404, "not_pinned", f"conversation {conv} is not bridged")
    return JSONResponse(pinned.view())


async def put_pin(request: Request) -> Response:
    """PUT: pin (201) or confirm a pin (200); ``?since_seq=N`` starts a new pin after seq N."""
    target = await _target(request, with_since=True)
    if isinstance(target, Response):
        return target
    bridge, conv, since = target
    if since is not None and bridge.get(conv) is not None:
        return _error(409, "already_pinned", "since_seq only applies to a new pin: DELETE it first")
    try:
        pinned, created = await bridge.pin(conv, PinKind.API, since)
    except BridgeStopping as exc:
        return _error(503, "shutting_down", str(exc))
    except Exception as exc:  # the pin store (Redis) did not answer
        return _error(503, "pin_store_unavailable", f"could not store the pin: {type(exc).__name__}")
    return JSONResponse(pinned.view(), status_code=201 if created else 200)


async def delete_pin(request: Request) -> Response:
    """DELETE: unpin (204); 404 when the conversation was not bridged."""
    target = await _target(request)
    if isinstance(target, Response):
        return target
    bridge, conv, _ = target
    try:
        removed = await bridge.unpin(conv)
    except Exception as exc:
        return _error(503, "pin_store_unavailable", f"could not delete the stored pin: {type(exc).__name__}")
    if not removed:
        return _error(404, "not_pinned", f"conversation {conv} is not bridged")
    return Response(status_code=204)


async def conversation_pin(request: Request) -> Response:
    """/api/v1/bridge/conversations/{id}: GET, PUT or DELETE."""
    handlers = {"GET": get_pin, "PUT": put_pin, "DELETE": delete_pin}
    return await handlers[request.method](request)
