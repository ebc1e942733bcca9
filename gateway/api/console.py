"""The live console: a static page at ``/console``, its script and stylesheet, and the vendored STOMP bundles.

Nothing is built at run time. ``gateway/static/console/`` is committed; ``gateway/static/vendor/`` holds the
@stomp/stompjs and sockjs-client browser bundles that ``make vendor`` copies from ``console/node_modules``
(installed from ``console/package-lock.json``). Without them the console still works over SSE and says so.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent.parent / "static"
CONSOLE_DIR = STATIC / "console"
VENDOR_DIR = STATIC / "vendor"

# Same-origin only: no inline script or style, no CDN; 'self' in connect-src covers ws:/wss: to this host (CSP3).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-cache",  # revalidate (ETag) so an upgraded gateway serves the new console at once
}


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response of the wrapped ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.raw}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *self.raw]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


VENDOR_MISSING = (
    "the console's vendored STOMP bundles are not installed: run `make vendor` "
    "(the console works over SSE without them)"
)


class _Vendor:
    """``/console/vendor/``: a missing bundle is a 404 saying to run ``make vendor`` (never a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not VENDOR_DIR.is_dir():
            raise HTTPException(404, VENDOR_MISSING)
        try:
            await self.app(scope, receive, send)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            raise HTTPException(404, f"no such file in /console/vendor/; {VENDOR_MISSING}") from None


async def console_page(request: Request) -> Response:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def console_slash(request: Request) -> Response:
    # The page's URLs are relative to /console (no trailing slash); a relative Location keeps any path prefix.
    query = request.url.query
    return RedirectResponse("../console" + (f"?{query}" if query else ""), status_code=308)


def console_routes() -> list[BaseRoute]:
    """``/console`` and its static files; ``/console/vendor/`` may be empty (STOMP mode then says ``make vendor``)."""
    return [
        Route("/console", console_page, methods=["GET"]),
        Route("/console/", console_slash, methods=["GET"]),
        Mount("/console/vendor", _Vendor(_SecurityHeaders(StaticFiles(directory=VENDOR_DIR, check_dir=False)))),
        Mount("/console", _SecurityHeaders(StaticFiles(directory=CONSOLE_DIR, check_dir=False))),
    ]
