"""The client's address behind trusted reverse proxies (GATEWAY_TRUSTED_PROXIES).

``X-Forwarded-For`` / ``Forwarded`` are honoured only when the peer itself is a configured proxy;
from anyone else they are ignored (a client could name any address). The ASGI middleware rewrites
the scope once, at the edge, so the per-address connection limit, the submission limiter, logs and
the Origin check (``X-Forwarded-Host`` / ``-Proto``) all see the real client and the public host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7239 §4: forwarded-pair = token "=" ( token / quoted-string ); elements split by "," and ";".
_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


def parse_trusted(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1, ::1"`` → networks; raises ValueError naming the bad entry."""
    nets = []
    for item in (p.strip() for p in spec.split(",")):
        if item:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"expected IP addresses or CIDRs separated by commas, got {item!r}") from None
    return tuple(nets)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # RFC 7239 §6: "[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated "_hidden" identifier, or garbage


class ClientAddress:
    """Decides who the client is from the peer address and, for a trusted proxy, its forwarded headers."""

    def __init__(self, trusted: Iterable[Network]) -> None:
        self.trusted = tuple(trusted)

    def is_trusted(self, host: str) -> bool:
        ip = _ip(host)
        return ip is not None and any(ip in net for net in self.trusted)

    def resolve(self, peer: str, headers: dict[bytes, str]) -> tuple[str, str | None, str | None]:
        """(client address, forwarded proto, forwarded host); the peer itself when it is not trusted."""
        if not self.trusted or not self.is_trusted(peer):
            return peer, None, None
        hops: list[str]
        proto = host = None
        if (forwarded := headers.get(b"forwarded")) is not None:
            hops = []
            first: dict[str, str] = {}
            for element in forwarded.split(","):
                pairs = {k.lower(): v.strip('"') for k, v in _PAIR.findall(element)}
                if "for" in pairs:
                    hops.append(pairs["for"])
                first = first or pairs
            proto, host = first.get("proto"), first.get("host")
        else:
            hops = [h for h in headers.get(b"x-forwarded-for", "").split(",") if h.strip()]
            proto = headers.get(b"x-forwarded-proto", "").split(",")[0].strip() or None
            host = headers.get(b"x-forwarded-host", "").split(",")[0].strip() or None
        client = peer
        # The rightmost hop not itself a trusted proxy is the client (anything left of it is its claim).
        for hop in reversed(hops):
            ip = _ip(hop)
            if ip is None:
                break
            client = str(ip)
            if not any(ip in net for net in self.trusted):
                break
        if proto is not None and proto.lower() not in ("http", "https"):
            proto = None
        return client, proto and proto.lower(), host


class ForwardedClient:
    """ASGI middleware: the scope's ``client``, ``scheme`` and ``Host`` as the trusted proxy saw them."""

    def __init__(self, app: ASGIApp, addresses: ClientAddress) -> None:
        self.app = app
        self.addresses = addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if self.addresses.trusted and scope["type"] in ("http", "websocket") and client:
            wanted = (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
            headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in wanted}
            if headers:
                addr, proto, host = self.addresses.resolve(client[0], headers)
                scope["client"] = (addr, 0 if addr != client[0] else client[1])
                if proto is not None:
                    secure = proto == "https"
                    scope["scheme"] = ("wss" if secure else "ws") if scope["type"] == "websocket" else proto
                if host is not None:
                    raw = [(k, v) for k, v in scope["headers"] if k != b"host"]
                    scope["headers"] = [(b"host", host.encode("latin-1")), *raw]
        await self.app(scope, receive, send)
