"""Who the client is behind trusted proxies, without sockets."""

from __future__ import annotations

import pytest

from gateway.clientaddr import ClientAddress, parse_trusted
from gateway.config import load_settings
from gateway.errors import ConfigError

PROXIES = ClientAddress(parse_trusted("127.0.0.1, 10.0.0.0/8, ::1"))
XFF_ALL = {b"x-forwarded-for": "203.0.113.5", b"x-forwarded-proto": "https", b"x-forwarded-host": "gw.example.com"}
RFC7239 = {b"forwarded": 'for="[2001:db8::7]:4711";proto=HTTPS;host=gw.example.com, for=10.0.0.2'}


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # Untrusted peers name nobody: their headers are ignored.
        ("198.51.100.7", {b"x-forwarded-for": "203.0.113.5"}, ("198.51.100.7", None, None)),
        ("198.51.100.7", {b"forwarded": "for=203.0.113.5;proto=https"}, ("198.51.100.7", None, None)),
        # A trusted proxy: the rightmost hop that is not itself a trusted proxy.
        ("127.0.0.1", {b"x-forwarded-for": "203.0.113.5"}, ("203.0.113.5", None, None)),
        ("127.0.0.1", {b"x-forwarded-for": "6.6.6.6, 203.0.113.5, 10.1.2.3"}, ("203.0.113.5", None, None)),
        (
            "127.0.0.1",
            {b"x-forwarded-for": "203.0.113.5", b"x-forwarded-proto": "https", b"x-forwarded-host": "gw.example.com"},
            ("203.0.113.5", "https", "gw.example.com"),
        ),
        (
            "::1",
            {b"forwarded": 'for="[2001:db8::7]:4711";proto=HTTPS;host=gw.example.com, for=10.0.0.2'},
            ("2001:db8::7", "https", "gw.example.com"),
        ),
        ("127.0.0.1", {b"forwarded": "for=192.0.2.60:8080"}, ("192.0.2.60", None, None)),
        ("127.0.0.1", {b"x-forwarded-for": "unknown"}, ("127.0.0.1", None, None)),
        ("127.0.0.1", {b"x-forwarded-proto": "javascript"}, ("127.0.0.1", None, None)),
    ],
)
def test_resolve(peer: str, headers: dict[bytes, str], expected: tuple[str, str | None, str | None]) -> None:
    assert PROXIES.resolve(peer, headers) == expected


def test_nobody_is_trusted_by_default_and_a_bad_entry_is_named() -> None:
    assert ClientAddress(parse_trusted("")).resolve("127.0.0.1", {b"x-forwarded-for": "1.2.3.4"})[0] == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"GATEWAY_TRUSTED_PROXIES.*'10\.0\.0\.0/33'"):
        load_settings(None, {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/33"})
