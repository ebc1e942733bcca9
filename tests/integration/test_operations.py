"""What operators are told: readiness names HQ's state truthfully; errors are JSON; no tracebacks."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
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
