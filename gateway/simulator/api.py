"""HQ's public endpoints as the seeds specify them: stream, post a message, conversation metadata."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.simulator.hq import SimulatedHq
from gateway.simulator.ids import parse_conversation_id
from gateway.simulator.script import DirectiveError
from gateway.simulator.stream import SseStream

MAX_BODY = 1 << 20
AGENT_ID = "5f0c6b8e-2d7a-4c1e-9a43-51d1c0a1e7b2"


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The simulator's JSON error body: ``{"error": code, "message": message}``."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def unauthorized() -> JSONResponse:
    # Never echo what the caller sent: it may be a real credential.
    message = "missing or invalid credentials: send Authorization: Bearer <token>"
    return error(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def stream_url(conv_id: str) -> str:
    return f"/v1/api/conversations/{conv_id}/stream"


class HqRoutes:
    """Handlers bound to one SimulatedHq."""

    def __init__(self, hq: SimulatedHq) -> None:
        self.hq = hq

    def routes(self) -> list[Route]:
        return [
            Route("/v1/api/conversations/{id}/stream", self.stream, methods=["GET"]),
            Route("/v1/api/conversations/{id}/messages", self.post_message, methods=["POST"]),
            Route("/v1/api/conversations/{id}", self.get_conversation, methods=["GET"]),
        ]

    def _admit(self, request: Request) -> str | Response:
        """The canonical conversation id, or the refusal every HQ endpoint shares."""
        conv_id = parse_conversation_id(request.path_params["id"])
        if self.hq.faults.unauthorized or not self.hq.token_matches(request.headers, request.cookies):
            return unauthorized()
        if conv_id is None:
            return error(400, "bad_request", "conversation id must be a UUID")
        if conv_id in self.hq.faults.missing:
            return error(404, "not_found", f"conversation {conv_id} not found")
        if self.hq.closing:
            return error(503, "unavailable", "the simulator is shutting down")
        return conv_id

    async def stream(self, request: Request) -> Response:
        counted = parse_conversation_id(request.path_params["id"])
        if counted is not None:
            # Counted before any refusal: tests prove a client does not hammer a 401/404/503.
            self.hq.stats.stream_opens[counted] += 1
        conv_id = self._admit(request)
        if isinstance(conv_id, Response):
            return conv_id
        status = self.hq.faults.take_status()
        if status is not None:
            return error(status, "injected_fault", f"simulated upstream failure ({status})")
        raw_cursor = request.headers.get("last-event-id") or request.query_params.get("since_seq")
        cursor: int | None = None
        if raw_cursor is not None:
            if not raw_cursor.isdigit() or not raw_cursor.isascii():
                return error(400, "bad_request", "Last-Event-ID / since_seq must be a non-negative integer")
            cursor = int(raw_cursor)
        user_scope = request.query_params.get("scope") == "user"
        return SseStream(self.hq, self.hq.conversation(conv_id), cursor, user_scope)

    async def post_message(self, request: Request) -> Response:
        conv_id = self._admit(request)
        if isinstance(conv_id, Response):
            return conv_id
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return error(413, "too_large", f"body larger than {MAX_BODY} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error(400, "bad_request", "body must be JSON")
        problem = _message_problem(body)
        if problem:
            return error(422, "unprocessable", problem)
        key = body.get("idempotency_key") or request.headers.get("idempotency-key") or None
        conv = self.hq.conversation(conv_id)
        try:
            idempotent = self.hq.submit(conv, body["text"], key)
        except DirectiveError as exc:
            return error(422, "unprocessable", str(exc))
        self.hq.stats.messages[conv_id] += 1
        content = {"accepted": True, "idempotent": idempotent, "stream_url": stream_url(conv_id)}
        return JSONResponse(content, status_code=202)

    async def get_conversation(self, request: Request) -> Response:
        conv_id = self._admit(request)
        if isinstance(conv_id, Response):
            return conv_id
        conv = self.hq.find(conv_id)
        agent = {
            "display_name": self.hq.config.agent_name,
            "avatar_url": "",
            "id": AGENT_ID,
            "slug": "simulator",
        }
        return JSONResponse(
            {
                "agent": agent,
                "channel_kind": "web",
                "conversation_id": conv_id,
                "mode": "standard",
                "participants": {},
                "read_only": False,
                "surface": "web",
                # The simulator treats every caller as a tenant admin, so ?view=admin is honoured.
                "viewing_as": "admin" if request.query_params.get("view") == "admin" else "participant",
                "title": conv.title if conv else None,
            }
        )


def _message_problem(body: Any) -> str | None:
    """Why a message body is unacceptable (422), or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        return "text is required and must be a non-empty string"
    key = body.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        return "idempotency_key must be a string or null"
    attachments = body.get("attachments")
    if attachments is not None and not (
        isinstance(attachments, list) and all(isinstance(a, dict) for a in attachments)
    ):
        return "attachments must be a list of objects"
    return None
