"""Behind a reverse proxy: forwarded client addresses count only when the proxy is trusted.

The test client connects from 127.0.0.1 and plays the proxy: trusted in one gateway
(GATEWAY_TRUSTED_PROXIES=127.0.0.1), untrusted in the other (a list that does not contain it).
"""

from __future__ import annotations

import asyncio

import httpx

from tests.clients import eventually
from tests.integration.conftest import StartGateway
from tests.servers import ServerProcess


async def _open_streams(gw: ServerProcess, conv: str, forwarded_for: list[str]) -> list[int]:
    """Open one SSE stream per address and keep them all open; the status each one got."""
    host, port = gw.url.removeprefix("http://").split(":")
    statuses, writers = [], []
    for addr in forwarded_for:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /api/v1/conversation/stream/{conv} HTTP/1.1\r\nHost: x\r\n"
                     f"X-Forwarded-For: {addr}\r\n\r\n".encode())  # fmt: skip
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        statuses.append(int(head.split(b" ")[1]))
        writers.append(writer)
    for writer in writers:
        writer.close()
    return statuses


def submit(gw: ServerProcess, conv: str, message: str, forwarded_for: str) -> httpx.Response:
    body = {"conversationId": conv, "message": message}
    headers = {"X-Forwarded-For": forwarded_for}
    url = f"{gw.url}/api/v1/conversation/message"
    return httpx.post(url, json=body, headers=headers, timeout=15)


LIMITS = {
    "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "2",
    "GATEWAY_LIMITS_SUBMIT_BURST": "1",
    "GATEWAY_LIMITS_SUBMIT_RATE_PER_S": "0.01",
    "GATEWAY_AUTH_ALLOWED_ORIGINS": "https://other.example",
}


def test_a_trusted_proxy_names_the_client_for_limits_logs_and_origin(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    gw = start_gateway(simulator.url, GATEWAY_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1", **LIMITS)
    a, b = "203.0.113.5", "203.0.113.6"
    # Connection limit per real client: two from a, the third from a refused, b still welcome.
    assert asyncio.run(_open_streams(gw, conv, [a, a, a, b])) == [200, 200, 429, 200]
    logged = lambda: f"client={a}:0" in gw.log() and f"client={b}:0" in gw.log()  # noqa: E731
    asyncio.run(eventually(logged, 5, "logs name the client"))
    # Submission limiter per real client (auth mode none: per address).
    assert submit(gw, conv, "one", a).status_code == 202
    assert submit(gw, conv, "two", a).status_code == 429
    assert submit(gw, conv, "three", b).status_code == 202
    # Origin check: the page was served from the public host the proxy forwards.
    same_site = {"Origin": "https://gw.example.com", "X-Forwarded-Host": "gw.example.com",
                 "X-Forwarded-Proto": "https"}  # fmt: skip
    assert httpx.get(f"{gw.url}/api/v1/conversation/audit/{conv}", headers=same_site).status_code == 200


def test_an_untrusted_peer_cannot_name_another_client(
    simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    gw = start_gateway(simulator.url, GATEWAY_TRUSTED_PROXIES="10.0.0.0/8", **LIMITS)
    a, b = "203.0.113.5", "203.0.113.6"
    assert asyncio.run(_open_streams(gw, conv, [a, b, "203.0.113.7"])) == [200, 200, 429]
    asyncio.run(eventually(lambda: gw.log().count("client=127.0.0.1:") >= 2, 5, "logs name the peer"))
    assert a not in gw.log()
    assert submit(gw, conv, "one", a).status_code == 202
    assert submit(gw, conv, "two", b).status_code == 429
    same_site = {"Origin": "https://gw.example.com", "X-Forwarded-Host": "gw.example.com"}
    assert httpx.get(f"{gw.url}/api/v1/conversation/audit/{conv}", headers=same_site).status_code == 403
