"""The simulator's own control API under ``/_sim/``: faults, counters, injected events, health."""

from __future__ import annotations

import re

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.simulator.api import error, unauthorized
from gateway.simulator.faults import FaultError, FaultSpec
from gateway.simulator.hq import SimulatedHq
from gateway.simulator.ids import parse_conversation_id

_EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


class ControlRoutes:
    """Handlers bound to one SimulatedHq; all but ``healthz`` need the token, faults never apply."""

    def __init__(self, hq: SimulatedHq) -> None:
        self.hq = hq

    def routes(self) -> list[Route]:
        return [
            Route("/_sim/healthz", self.healthz, methods=["GET"]),
            Route("/_sim/stats", self.stats, methods=["GET"]),
            Route("/_sim/faults", self.get_faults, methods=["GET"]),
            Route("/_sim/faults", self.set_faults, methods=["POST"]),
            Route("/_sim/conversations/{id}/emit", self.emit, methods=["POST"]),
        ]

    def _denied(self, request: Request) -> Response | None:
        if self.hq.token_matches(request.headers, request.cookies):
            return None
        return unauthorized()

    async def _json(self, request: Request) -> object:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return None

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": not self.hq.closing}, status_code=503 if self.hq.closing else 200)

    async def stats(self, request: Request) -> Response:
        return self._denied(request) or JSONResponse(self.hq.stats.as_json())

    async def get_faults(self, request: Request) -> Response:
        return self._denied(request) or JSONResponse(self.hq.faults.snapshot())

    async def set_faults(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        try:
            spec = FaultSpec.from_json(await self._json(request))
        except FaultError as exc:
            return error(422, "unprocessable", str(exc))
        self.hq.faults.apply(spec)
        return JSONResponse(self.hq.faults.snapshot())

    async def emit(self, request: Request) -> Response:
        """Append one event: ``{"event": name, "data": any JSON}`` or ``{"event": name, "raw": text}``."""
        denied = self._denied(request)
        if denied:
            return denied
        conv_id = parse_conversation_id(request.path_params["id"])
        if conv_id is None:
            return error(400, "bad_request", "conversation id must be a UUID")
        body = await self._json(request)
        if not isinstance(body, dict):
            return error(422, "unprocessable", "body must be a JSON object")
        name = body.get("event")
        if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
            return error(422, "unprocessable", "event must be 1-100 characters of [A-Za-z0-9_.:-]")
        raw = body.get("raw")
        if raw is not None and (not isinstance(raw, str) or "data" in body):
            return error(422, "unprocessable", "raw must be a string, and excludes data")
        data: object = raw.encode() if isinstance(raw, str) else body.get("data", {})
        entry = self.hq.conversation(conv_id).append(name, data)
        return JSONResponse({"id": entry.id, "event": entry.event})
