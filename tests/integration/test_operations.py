"""What operators are told: readiness names HQ's state truthfully; errors are JSON; no tracebacks."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import websockets

from tests.clients import SseViewer, eventually
from tests.integration.conftest import StartGateway
from tests.servers import ServerProcess, free_port


def _hq(gw: ServerProcess) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{gw.url}/readyz")
    return r.status_code, r.json()["checks"]["hq"]


def _watch_until_hq(gw: ServerProcess, conv: str, state: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        await eventually(lambda: _hq(gw)[1]["detail"]["state"] == state, 10, f"hq {state}")
        await viewer.stop()
        return _hq(gw)[1]

    return asyncio.run(main())


def test_readyz_names_hq_unreachable_but_stays_ready(start_gateway: StartGateway, conv: str) -> None:
    gw = start_gateway(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    status, hq = _hq(gw)
    assert status == 200 and hq == {"ok": True, "affectsReadiness": False,
                                    "detail": {"state": "unknown", "lastError": None, "forS": None,
                                               "checkedAgoS": None}}  # fmt: skip
    hq = _watch_until_hq(gw, conv, "unreachable")
    assert hq["ok"] is False and hq["affectsReadiness"] is False
    assert "ConnectError" in hq["detail"]["lastError"]
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True  # a shared outage: stay in the LB
    assert {"config", "shutdown", "journal", "redis", "upstreams", "hq"} <= set(ready.json()["checks"])


def test_readyz_names_a_refused_service_token(simulator: ServerProcess, start_gateway: StartGateway, conv: str) -> None:
    gw = start_gateway(simulator.url, GATEWAY_HQ_TOKEN="hq_pat_wrong_token_000")
    hq = _watch_until_hq(gw, conv, "token_refused")
    assert hq["ok"] is False and "401" in hq["detail"]["lastError"]
    assert "hq_pat_wrong" not in httpx.get(f"{gw.url}/readyz").text  # the token is never echoed


def test_readyz_says_hq_ok_once_a_stream_is_up(simulator: ServerProcess, gateway: ServerProcess, conv: str) -> None:
    hq = _watch_until_hq(gateway, conv, "ok")
    assert hq["ok"] is True and hq["detail"]["lastError"] is None


def test_a_stomp_header_with_an_escaped_newline_never_forges_a_log_line(gateway: ServerProcess, conv: str) -> None:
    async def main() -> None:
        async with websockets.connect(gateway.url.replace("http", "ws") + "/ws-convengine",
                                      subprotocols=[websockets.Subprotocol("v12.stomp")]) as ws:  # fmt: skip
            await ws.send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
            assert str(await ws.recv()).startswith("CONNECTED")
            # STOMP 1.2 §Value Encoding: "\n" in a header value is a newline once decoded.
            forged = "x\\nFORGED gateway.audit: attach subject=admin"
            await ws.send(f"SUBSCRIBE\nid:{forged}\nack:auto\n"
                          f"destination:/topic/convengine/audit/{conv}\nreceipt:r\n\n\x00")  # fmt: skip
            assert str(await ws.recv()).startswith("RECEIPT")

    asyncio.run(main())
    lines = gateway.log().splitlines()
    subscribe = [line for line in lines if "stomp subscribe" in line and conv in line]
    assert subscribe and "id=x\\x0aFORGED gateway.audit" in subscribe[-1]
    assert not any(line.startswith("FORGED") for line in lines)
    session = subscribe[-1].split("session=")[1].split()[0]
    assert session != "***" and len(session) > 4  # STOMP session ids are not tokens: logged as they are


def test_a_lone_surrogate_over_sockjs_is_broken_json_not_a_traceback(start_gateway: StartGateway) -> None:
    gw = start_gateway(f"http://127.0.0.1:{free_port()}")
    url = f"{gw.url}/ws-convengine/000/lonesurrogate"
    with httpx.Client() as client:
        assert client.post(f"{url}/xhr").text == "o\n"
        sent = client.post(f"{url}/xhr_send", content=rb'["\ud800"]')
        assert (sent.status_code, sent.text) == (500, "Broken JSON encoding.")

    async def main() -> None:
        ws_url = gw.url.replace("http", "ws") + "/ws-convengine/000/lonesurrogate2/websocket"
        async with websockets.connect(ws_url) as ws:
            assert await ws.recv() == "o"
            await ws.send(r'["CONNECT\naccept-version:1.2\n\n\u0000"]')
            assert str(await ws.recv()).startswith('a["CONNECTED')
            await ws.send(r'["SUBSCRIBE\nid:\ud800\n\n\u0000"]')
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)  # sockjs-protocol: broken JSON ends the session

    asyncio.run(main())
    assert "Traceback" not in gw.log()


def test_every_error_answers_json_that_names_the_problem(gateway: ServerProcess, conv: str) -> None:
    def check(r: httpx.Response, status: int, code: str, words: str) -> None:
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert r.json()["error"] == code and words in r.json()["message"], r.json()

    check(httpx.get(f"{gateway.url}/nope"), 404, "not_found", "/nope")
    check(httpx.delete(f"{gateway.url}/healthz"), 405, "method_not_allowed", "DELETE")
    assert "GET" in httpx.delete(f"{gateway.url}/healthz").headers["allow"]
    check(httpx.get(f"{gateway.url}/api/v1/conversation/audit/{conv}?limit=-1"), 400, "bad_request",
          "limit must be an integer from 1 to 1000")  # fmt: skip
    check(httpx.get(f"{gateway.url}/api/v1/conversation/audit/{conv}?limit=0"), 400, "bad_request", "limit")
    assert httpx.get(f"{gateway.url}/api/v1/conversation/audit/{conv}?limit=1000").status_code == 200
    snake = {"conversation_id": conv, "message": "hi"}
    check(httpx.post(f"{gateway.url}/api/v1/conversation/message", json=snake), 400, "bad_request",
          "conversationId is missing (not conversation_id)")  # fmt: skip
    # /console/vendor/ without the bundle (or without `make vendor` at all): a 404 that says what to do.
    check(httpx.get(f"{gateway.url}/console/vendor/no-such-bundle.js"), 404, "not_found", "make vendor")
    assert "Traceback" not in gateway.log()


def test_a_client_gone_mid_body_is_counted_not_a_traceback(start_gateway: StartGateway) -> None:
    gw = start_gateway(f"http://127.0.0.1:{free_port()}")
    host, port = gw.url.removeprefix("http://").split(":")

    async def main() -> None:
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /api/v1/conversation/message HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 500\r\n\r\n{"conversationId": "')  # fmt: skip
        await writer.drain()
        writer.close()
        await eventually(lambda: 'outcome="client_gone"' in httpx.get(f"{gw.url}/metrics").text, 5, "counted")

    asyncio.run(main())
    assert "client disconnected" in gw.log()
    assert "Traceback" not in gw.log()
