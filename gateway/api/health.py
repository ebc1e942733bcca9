"""Liveness and readiness."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import __version__
from gateway.runtime import Gateway


async def healthz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return JSONResponse({"status": "ok", "version": __version__, "uptimeS": round(time.time() - gw.started_at)})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    checks = gw.readiness()
    # An entry with affectsReadiness false (hq: an outage every replica shares) is reported, never
    # a reason to pull this replica out of the load balancer.
    ready = all(c["ok"] or not c.get("affectsReadiness", True) for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
