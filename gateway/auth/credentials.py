"""Where a viewer's token comes from (pure): headers, cookie, ``?access_token=``, STOMP CONNECT.

Cookies are ambient: a browser attaches them to requests any site makes, WebSockets included
(cross-site WebSocket hijacking). A cookie therefore counts only when the request has no Origin,
comes from the gateway's own origin, or from an origin named in the explicit allow-list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import cookie_parser


@dataclass(frozen=True, slots=True)
class Credential:
    """A presented token and where it came from; the token never appears in a repr."""

    token: str = field(repr=False)
    source: str  # header | query | cookie | stomp-authorization | stomp-passcode


def canonical_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def cookie_allowed(headers: Mapping[str, str], allowed_origins: frozenset[str] | None) -> bool:
    """Whether an ambient cookie may authenticate this request (``allowed_origins`` None: "*")."""
    origin = headers.get("origin")
    if origin is None:
        return True  # not a browser acting for some page
    origin = canonical_origin(origin)
    if allowed_origins is not None and origin in allowed_origins:
        return True
    host = headers.get("host", "").lower()
    return bool(host) and urlsplit(origin).netloc == host


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def http_credential(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    *,
    cookie_name: str,
    allowed_origins: frozenset[str] | None,
) -> Credential | None:
    """The request's token: ``Authorization: Bearer``, then ``?access_token=``, then the cookie."""
    if token := _bearer(headers.get("authorization")):
        return Credential(token, "header")
    if token := query.get("access_token"):
        return Credential(token, "query")
    raw_cookies = headers.get("cookie")
    if raw_cookies and cookie_allowed(headers, allowed_origins):
        token = cookie_parser(raw_cookies).get(cookie_name)
        if token:
            return Credential(token, "cookie")
    return None


def stomp_credential(
    connect_headers: Iterable[tuple[str, str]],
    handshake_headers: Mapping[str, str],
    handshake_query: Mapping[str, str],
    *,
    cookie_name: str,
    allowed_origins: frozenset[str] | None,
) -> Credential | None:
    """CONNECT ``Authorization`` (Bearer or bare) or ``passcode``; else the WebSocket/SockJS handshake's."""
    auth = passcode = None
    for name, value in connect_headers:  # STOMP 1.2 §Repeated Header Entries: the first one wins
        lower = name.lower()
        if lower == "authorization" and auth is None:
            auth = value
        elif lower == "passcode" and passcode is None:
            passcode = value
    if auth and auth.strip():
        return Credential(_bearer(auth) or auth.strip(), "stomp-authorization")
    if passcode:
        return Credential(passcode, "stomp-passcode")
    return http_credential(handshake_headers, handshake_query, cookie_name=cookie_name, allowed_origins=allowed_origins)
