"""Viewer authentication against real servers: jwt and hq modes, scopes side by side, expiry, limits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from gateway.auth import JwtVerifier, Scope
from gateway.config import Settings
from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import TOKEN, StartGateway, _gateway, sim_faults
from tests.servers import ROOT, ServerProcess, free_port

SECRET = "integration-secret-0123456789abcdefghijklmn"
JWT_ENV = {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_AUTH_JWT_SECRET": SECRET, "GATEWAY_AUTH_JWT_LEEWAY_S": "0"}
HIDDEN = {"TOKEN_USAGE", "AGENT_ACTIVE"}  # stage, or VERBOSE determinant, of user-hidden envelopes


def mint(convs: list[str] | str, scope: str = "user", ttl: float = 600, submit: bool = False, **claims: Any) -> str:
    body = {"sub": "alice", "aud": "hq-gateway", "exp": int(time.time() + ttl), "convs": convs, "scope": scope,
            "submit": submit, **claims}  # fmt: skip
    return jwt.encode(body, claims.pop("key", SECRET), algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def kind(envelope: dict[str, Any]) -> str:
    return str((envelope.get("verbose") or {}).get("determinant") or envelope["stage"])


@pytest.fixture(scope="module")
def jwt_gateway(logs: Path, simulator: ServerProcess) -> Iterator[ServerProcess]:
    gw = _gateway(logs, simulator.url, **JWT_ENV)
    yield gw
    gw.stop()


def attach(gw: ServerProcess, conv: str, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
    """Open the SSE stream and return its response (status, headers, and the body when refused)."""
    url = f"{gw.url}/api/v1/conversation/stream/{conv}"
    with httpx.Client(timeout=5) as client, client.stream("GET", url, headers=headers, params=params) as r:
        if r.status_code != 200:
            r.read()
        return r


def post(
    gw: ServerProcess, conv: str, token: str | None, message: str = "hi [deltas=2]", **hdrs: str
) -> httpx.Response:
    headers = {**(bearer(token) if token else {}), **hdrs}
    body = {"conversationId": conv, "message": message}
    return httpx.post(f"{gw.url}/api/v1/conversation/message", json=body, headers=headers, timeout=15)


def metric(gw: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


async def stomp_exchange(gw: ServerProcess, *frames: str, expect: int, timeout: float = 5) -> list[str]:
    """Send raw STOMP frames over a WebSocket; the server's frames, until ``expect`` or close."""
    url = gw.url.replace("http://", "ws://") + "/ws-convengine"
    got: list[str] = []
    async with websockets.connect(url, subprotocols=["v12.stomp"]) as ws:  # type: ignore[list-item]
        for frame in frames:
            await ws.send(frame)
        try:
            async with asyncio.timeout(timeout):
                while len(got) < expect:
                    got += [f for f in str(await ws.recv()).split("\x00") if f.strip("\n")]
        except (websockets.ConnectionClosed, TimeoutError):
            pass
    return got


def connect_frame(**headers: str) -> str:
    extra = "".join(f"{k}:{v}\n" for k, v in headers.items())
    return f"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n{extra}\n\x00"


def subscribe_frame(conv: str, sub_id: str = "0", **headers: str) -> str:
    extra = "".join(f"{k}:{v}\n" for k, v in headers.items())
    return f"SUBSCRIBE\nid:{sub_id}\ndestination:/topic/convengine/audit/{conv}\n{extra}\n\x00"


# -- jwt mode ----------------------------------------------------------------------------------


def test_jwt_sse_allowed_denied_expired_wrong_signature_wrong_audience(jwt_gateway: ServerProcess, conv: str) -> None:
    good = mint([conv])
    assert attach(jwt_gateway, conv, bearer(good)).status_code == 200
    assert attach(jwt_gateway, conv, access_token=good).status_code == 200  # EventSource: no headers
    assert attach(jwt_gateway, conv, {"Cookie": f"hq_session={good}"}).status_code == 200
    refusals = {
        "missing": (attach(jwt_gateway, conv), 401, "missing credential"),
        "expired": (attach(jwt_gateway, conv, bearer(mint([conv], ttl=-10))), 401, "token expired"),
        "signature": (attach(jwt_gateway, conv, bearer(mint([conv], key="x" * 40))), 401, "signature invalid"),
        "audience": (attach(jwt_gateway, conv, bearer(mint([conv], aud="other"))), 401, "audience mismatch"),
        "other conversation": (attach(jwt_gateway, str(uuid.uuid4()), bearer(good)), 403, "does not allow"),
        # A cookie sent by another site's page is ambient authority: ignored (CSWSH/CSRF).
        "cross-site cookie": (
            attach(jwt_gateway, conv, {"Cookie": f"hq_session={good}", "Origin": "https://evil.example"}),
            401,
            "missing credential",
        ),
    }
    for case, (response, status, message) in refusals.items():
        assert response.status_code == status, case
        body = response.json()
        assert message in body["message"], (case, body)
        assert good not in response.text
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_jwt_stomp_connect_and_subscribe_authorization(jwt_gateway: ServerProcess, conv: str) -> None:
    good = mint([conv])

    async def main() -> None:
        out = await stomp_exchange(jwt_gateway, connect_frame(), expect=1)
        assert out[0].startswith("ERROR\n") and "missing credential" in out[0]
        out = await stomp_exchange(jwt_gateway, connect_frame(passcode=mint([conv], key="y" * 40)), expect=1)
        assert out[0].startswith("ERROR\n") and "token signature invalid" in out[0]
        out = await stomp_exchange(jwt_gateway, connect_frame(passcode=mint([conv], ttl=-5)), expect=1)
        assert out[0].startswith("ERROR\n") and "token expired" in out[0]
        other = str(uuid.uuid4())
        out = await stomp_exchange(
            jwt_gateway, connect_frame(Authorization=f"Bearer {good}"), subscribe_frame(other, receipt="r1"), expect=2
        )
        assert out[0].startswith("CONNECTED\n")
        assert out[1].startswith("ERROR\n") and "forbidden" in out[1] and "receipt-id:r1" in out[1]
        out = await stomp_exchange(
            jwt_gateway, connect_frame(login="alice", passcode=good), subscribe_frame(conv, receipt="ok"), expect=2
        )
        assert out[0].startswith("CONNECTED\n") and out[1].startswith("RECEIPT\nreceipt-id:ok")
        for frame in out:
            assert good not in frame

    asyncio.run(main())


def test_same_turn_seen_by_user_and_admin_side_by_side(jwt_gateway: ServerProcess, conv: str) -> None:
    user_token, admin_token = mint([conv], "user"), mint("*", "admin", submit=True)

    async def main() -> None:
        user = SseViewer(jwt_gateway.url, conv, headers=bearer(user_token)).start()
        admin = SseViewer(jwt_gateway.url, conv, headers=bearer(admin_token)).start()
        downgraded = SseViewer(jwt_gateway.url, conv, headers=bearer(admin_token)).start(params={"scope": "user"})
        stomp_frames: list[str] = []
        subscribed = asyncio.Event()

        async def stomp_user() -> None:
            url = jwt_gateway.url.replace("http://", "ws://") + "/ws-convengine"
            async with websockets.connect(url) as ws:
                await ws.send(connect_frame(passcode=user_token) + subscribe_frame(conv, receipt="s"))
                while True:
                    frames = str(await ws.recv()).split("\x00")
                    if any(f.lstrip("\n").startswith("RECEIPT") for f in frames):
                        subscribed.set()
                    stomp_frames.extend(f for f in frames if f.startswith("MESSAGE"))

        stomp_task = asyncio.create_task(stomp_user())
        for v in (user, admin, downgraded):
            await v.wait_connected()
            assert v.status == 200
        async with asyncio.timeout(10):
            await subscribed.wait()  # the SUBSCRIBE's RECEIPT: the STOMP subscription is registered
        r = post(jwt_gateway, conv, admin_token, "side by side [deltas=6] [tools=2]")
        assert r.status_code == 202, r.text
        for v in (user, admin, downgraded):
            await v.wait_for_stage("ENGINE_RETURN")
        await eventually(lambda: len(stomp_frames) == len(user.events), 10, "stomp user viewer")
        stomp_task.cancel()
        full, seen = admin.envelopes, user.envelopes
        assert_dense(admin.seqs)
        assert {"TOKEN_USAGE", "AGENT_ACTIVE"} <= {kind(e) for e in full}
        assert any("args_digest" in e["payload"] for e in full if e["stage"] == "MCP_TOOL_CALL")
        # The user viewer: the same seqs minus the hidden envelopes (gaps by design), stripped fields.
        assert user.seqs == [s for s, e in zip(admin.seqs, full, strict=True) if kind(e) not in HIDDEN]
        assert not {kind(e) for e in seen} & HIDDEN
        tool_calls = [e for e in seen if e["stage"] == "MCP_TOOL_CALL"]
        assert len(tool_calls) == 2 and all("args_digest" not in e["payload"] for e in tool_calls)
        by_seq = dict(zip(admin.seqs, full, strict=True))
        for seq, env in zip(user.seqs, seen, strict=True):
            expected = dict(by_seq[seq])
            expected["payload"] = {k: v for k, v in expected["payload"].items() if k != "args_digest"}
            assert env == expected
        assert [e.data for e in downgraded.events] == [e.data for e in user.events]  # ?scope=user self-downgrade
        stomp_bodies = [json.loads(f.partition("\n\n")[2]) for f in stomp_frames]
        assert stomp_bodies == seen
        # REST reads are filtered the same way.
        async with httpx.AsyncClient() as c:
            audit = await c.get(f"{jwt_gateway.url}/api/v1/conversation/audit/{conv}", headers=bearer(user_token))
            trace = await c.get(f"{jwt_gateway.url}/api/v1/conversation/audit/{conv}/trace", headers=bearer(user_token))
        assert [i["auditId"] or i["verbose"]["verboseId"] for i in audit.json()["items"]] == user.seqs
        assert "args_digest" not in audit.text and "TOKEN_USAGE" not in audit.text and "args_digest" not in trace.text
        for v in (user, admin, downgraded):
            await v.stop()

    asyncio.run(main())
    assert "admin attach subject='alice' conversation=" + conv in jwt_gateway.log()


def test_token_expiry_ends_sse_and_stomp_connections(jwt_gateway: ServerProcess, conv: str) -> None:
    short = mint([conv], ttl=2)

    async def main() -> None:
        started = time.monotonic()
        viewer = SseViewer(jwt_gateway.url, conv, headers=bearer(short)).start()
        frames = await stomp_exchange(jwt_gateway, connect_frame(passcode=short), subscribe_frame(conv, receipt="r"),
                                      expect=3, timeout=8)  # fmt: skip
        await asyncio.wait_for(viewer.closed.wait(), 8)
        elapsed = time.monotonic() - started
        assert viewer.status == 200
        last = viewer.events[-1]
        assert last.event == "error" and json.loads(last.data)["error"] == "token_expired"
        assert json.loads(last.data)["resumeFrom"] >= 0
        assert frames[0].startswith("CONNECTED") and frames[1].startswith("RECEIPT")
        assert frames[-1].startswith("ERROR\n") and "token_expired" in frames[-1]
        assert 0.5 < elapsed < 6

    asyncio.run(main())
    assert metric(jwt_gateway, "hqgw_viewer_disconnects_total", reason="token_expired") >= 2


def test_submission_needs_the_submit_claim(jwt_gateway: ServerProcess, conv: str) -> None:
    assert post(jwt_gateway, conv, None).status_code == 401
    refused = post(jwt_gateway, conv, mint([conv], submit=False))
    assert refused.status_code == 403 and "submission" in refused.json()["message"]
    assert post(jwt_gateway, str(uuid.uuid4()), mint([conv], submit=True)).status_code == 403
    assert post(jwt_gateway, conv, mint([conv], submit=True)).status_code == 202


def test_token_cli_mints_a_working_token(jwt_gateway: ServerProcess, conv: str) -> None:
    env = {**os.environ, **JWT_ENV}
    cmd = [sys.executable, "-m", "gateway.cli", "token", "--sub", "carol", "--conv", conv, "--scope", "user",
           "--ttl", "120", "--submit"]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.count("\n") == 1
    token = out.strip()
    principal = JwtVerifier(Settings(auth_mode="jwt", auth_jwt_secret=SECRET)).verify(token)
    assert (principal.subject, principal.scope, principal.may_submit) == ("carol", Scope.USER, True)
    assert attach(jwt_gateway, conv, bearer(token)).status_code == 200
    everything = subprocess.run([*cmd[:6], "--all", "--ttl", "60"], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
    assert attach(jwt_gateway, str(uuid.uuid4()), bearer(everything)).status_code == 200
    bad = subprocess.run([*cmd[:6], "--conv", "nope"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--conv" in bad.stderr


# -- hq mode -----------------------------------------------------------------------------------


def test_hq_mode_asks_hq_once_and_forwards_the_viewers_credential(
    start_gateway: StartGateway, simulator: ServerProcess, conv: str
) -> None:
    gw = start_gateway(simulator.url, GATEWAY_AUTH_MODE="hq", GATEWAY_AUTH_HQ_SCOPE="user")
    missing = str(uuid.uuid4())
    sim_faults(simulator, {"missing": [missing]})
    try:
        for _ in range(5):  # a reconnect storm: one HQ call, then the cache
            assert attach(gw, conv, bearer(TOKEN)).status_code == 200
        assert attach(gw, conv, {"Cookie": f"hq_session={TOKEN}"}).status_code == 200
        assert metric(gw, "hqgw_auth_hq_lookups_total", outcome="allowed") == 1
        for _ in range(3):
            wrong = attach(gw, conv, bearer("hq_pat_wrong_token_456"))
            assert wrong.status_code == 401 and "HQ refused" in wrong.json()["message"]
        assert metric(gw, "hqgw_auth_hq_lookups_total", outcome="denied") == 1
        refused = attach(gw, missing, bearer(TOKEN))
        assert refused.status_code == 403 and "does not exist" in refused.json()["message"]
        assert attach(gw, conv).status_code == 401
        # Submissions carry the viewer's own credential: a wrong one never reaches HQ as the gateway.
        assert post(gw, conv, "hq_pat_wrong_token_456").status_code == 401
        assert post(gw, conv, TOKEN).status_code == 202

        async def user_scope_over_hq() -> None:
            viewer = SseViewer(gw.url, conv, headers=bearer(TOKEN)).start()
            await viewer.wait_connected()
            assert post(gw, conv, TOKEN, "hq scoped [deltas=3] [tools=1]").status_code == 202

            def scoped_turn_done() -> bool:
                stages = [(e["stage"], e["payload"].get("message", "")) for e in viewer.envelopes]
                mine = [i for i, (st, msg) in enumerate(stages) if st == "USER_INPUT" and msg.startswith("hq scoped")]
                return bool(mine) and any(st == "ENGINE_RETURN" for st, _ in stages[mine[0] :])

            await eventually(scoped_turn_done, 10, "the scoped turn")
            assert not {kind(e) for e in viewer.envelopes} & HIDDEN
            await viewer.stop()

        asyncio.run(user_scope_over_hq())
    finally:
        sim_faults(simulator, {"clear": True})


def test_none_mode_refuses_a_non_loopback_bind() -> None:
    env = {**os.environ, "GATEWAY_AUTH_MODE": "none", "GATEWAY_HOST": "0.0.0.0", "GATEWAY_PORT": str(free_port())}
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert run.returncode == 2
    assert "GATEWAY_AUTH_MODE=none refuses the non-loopback GATEWAY_HOST=0.0.0.0" in run.stderr


# -- hostile input limits ------------------------------------------------------------------------


def test_origin_cors_header_size_connection_and_rate_limits(
    start_gateway: StartGateway, simulator: ServerProcess, conv: str
) -> None:
    limits = {
        "GATEWAY_AUTH_ALLOWED_ORIGINS": "https://app.example",
        "GATEWAY_LIMITS_SUBMIT_BURST": "2",
        "GATEWAY_LIMITS_SUBMIT_RATE_PER_S": "0.01",
        "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "4",
        "GATEWAY_LIMITS_MAX_HEADER_BYTES": "4096",
    }
    gw = start_gateway(simulator.url, **JWT_ENV, **limits)
    token = mint([conv], submit=True)
    audit = f"{gw.url}/api/v1/conversation/audit/{conv}"
    # CORS: the allow-list app gets credentials; any other origin is refused outright.
    ok = httpx.get(audit, headers={**bearer(token), "Origin": "https://app.example"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    assert ok.headers["access-control-allow-credentials"] == "true"
    evil = httpx.get(audit, headers={**bearer(token), "Origin": "https://evil.example"})
    assert httpx.get(audit, headers={**bearer(token), "Origin": gw.url}).status_code == 200  # its own origin
    assert evil.status_code == 403 and evil.json()["error"] == "origin_not_allowed"
    preflight = httpx.options(f"{gw.url}/api/v1/conversation/message", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})  # fmt: skip
    assert preflight.status_code == 200 and "authorization" in preflight.headers["access-control-allow-headers"].lower()
    # Request heads are bounded (httptools alone would buffer any size).
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64_000 + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 431")
    # Submissions: a burst of 2, then 429 with Retry-After.
    assert [post(gw, conv, token).status_code for _ in range(2)] == [202, 202]
    limited = post(gw, conv, token)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # Concurrent connections per client address.

    async def connections() -> None:
        viewers = [SseViewer(gw.url, conv, headers=bearer(token)).start() for _ in range(4)]
        for v in viewers:
            await v.wait_connected()
            assert v.status == 200
        async with httpx.AsyncClient() as c:
            over = await c.get(audit, headers=bearer(token))
        assert over.status_code == 429 and over.json()["error"] == "too_many_connections"
        ws_url = gw.url.replace("http://", "ws://") + "/ws-convengine"
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url):
                pass
        for v in viewers:
            await v.stop()
        await eventually(lambda: httpx.get(audit, headers=bearer(token)).status_code == 200, 5, "slots freed")

    asyncio.run(connections())
    assert gw.alive
    assert metric(gw, "hqgw_refusals_total", reason="too_many_connections") >= 1


# -- secrets never written -----------------------------------------------------------------------


def test_no_token_is_ever_logged(start_gateway: StartGateway, simulator: ServerProcess, conv: str) -> None:
    """Every credential path at debug level, then grep the captured logs and the metrics."""
    jwt_gw = start_gateway(simulator.url, **JWT_ENV)
    hq_gw = start_gateway(simulator.url, GATEWAY_AUTH_MODE="hq")
    tokens = {
        "header": mint([conv], "admin", submit=True),
        "query": mint([conv], jti="q"),
        "cookie": mint([conv], jti="c"),
        "passcode": mint([conv], jti="p"),
        "stomp-authorization": mint([conv], jti="a"),
        "bad-signature": mint([conv], key="z" * 40),
        "expired": mint([conv], ttl=-30),
        "opaque": "opaque-viewer-credential-789",
    }
    attach(jwt_gw, conv, bearer(tokens["header"]))
    attach(jwt_gw, conv, access_token=tokens["query"])
    attach(jwt_gw, conv, {"Cookie": f"hq_session={tokens['cookie']}"})
    for name in ("bad-signature", "expired", "opaque"):
        attach(jwt_gw, conv, bearer(tokens[name]))
        post(jwt_gw, conv, tokens[name])
    post(jwt_gw, conv, tokens["header"], "logged? [deltas=2]")

    async def stomp() -> None:
        await stomp_exchange(jwt_gw, connect_frame(passcode=tokens["passcode"]), subscribe_frame(conv), expect=1)
        await stomp_exchange(jwt_gw, connect_frame(Authorization=f"Bearer {tokens['stomp-authorization']}"), expect=1)
        await stomp_exchange(jwt_gw, connect_frame(passcode=tokens["bad-signature"]), expect=1)
        await stomp_exchange(hq_gw, connect_frame(passcode=tokens["opaque"]), subscribe_frame(conv), expect=2)
        await stomp_exchange(hq_gw, connect_frame(passcode=TOKEN), subscribe_frame(conv), expect=1)

    asyncio.run(stomp())
    attach(hq_gw, conv, bearer(tokens["opaque"]))
    attach(hq_gw, conv, access_token=TOKEN)
    post(hq_gw, conv, TOKEN, "as viewer [deltas=2]")
    metrics = httpx.get(f"{jwt_gw.url}/metrics").text + httpx.get(f"{hq_gw.url}/metrics").text
    jwt_gw.stop()
    hq_gw.stop()
    logs = jwt_gw.log() + hq_gw.log()
    assert "admin attach" in logs  # the logs did capture this run
    for name, secret in [*tokens.items(), ("hq token", TOKEN), ("jwt secret", SECRET)]:
        for part in secret.split(".") if secret.count(".") == 2 else [secret]:
            if len(part) > 12:
                assert part not in logs, f"{name} token written to the log"
                assert part not in metrics, f"{name} token in metrics"
