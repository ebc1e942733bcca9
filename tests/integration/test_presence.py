"""Presence and the admin API on one gateway (memory mode) and in jwt mode: counts, subjects, list, disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import _gateway, submit
from tests.servers import ServerProcess

SECRET = "presence-secret-0123456789abcdefghijklmnop"
JWT_ENV = {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_AUTH_JWT_SECRET": SECRET, "GATEWAY_AUTH_JWT_LEEWAY_S": "0"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def mint(convs: list[str] | str, scope: str = "user", sub: str = "alice") -> str:
    body = {"sub": sub, "aud": "hq-gateway", "exp": 2_000_000_000, "convs": convs, "scope": scope}
    return jwt.encode(body, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class StompViewer:
    """A raw STOMP 1.2 viewer over WebSocket: every frame the server sent, and how the socket closed."""

    base_url: str
    conversation_id: str
    passcode: str | None = None
    sockjs: bool = False  # through SockJS's websocket transport (frames in o / a[...] / c[...])
    frames: list[str] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> StompViewer:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        assert any(f.startswith("RECEIPT") for f in self.frames), self.frames
        return self

    async def _run(self, ready: asyncio.Event) -> None:
        url = self.base_url.replace("http://", "ws://") + "/ws-convengine"
        if self.sockjs:
            url += f"/000/{uuid.uuid4().hex[:8]}/websocket"
        auth = f"passcode:{self.passcode}\n" if self.passcode else ""
        destination = f"/topic/convengine/audit/{self.conversation_id}"
        frames = [f"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,0\n{auth}\n\x00",
                  f"SUBSCRIBE\nid:0\ndestination:{destination}\nreceipt:r0\n\n\x00"]  # fmt: skip
        try:
            async with websockets.connect(url, subprotocols=None if self.sockjs else ["v12.stomp"]) as ws:  # type: ignore[list-item]
                for frame in frames:
                    await ws.send(json.dumps([frame]) if self.sockjs else frame)
                try:
                    async for message in ws:
                        for text in self._unwrap(str(message)):
                            self.frames += [f for f in text.split("\x00") if f.strip("\n")]
                        if any(f.startswith(("RECEIPT", "ERROR")) for f in self.frames):
                            ready.set()
                except websockets.ConnectionClosed:
                    pass
                if self.close_code is None:
                    self.close_code = ws.close_code
        finally:
            ready.set()
            self.closed.set()

    def _unwrap(self, message: str) -> list[str]:
        """STOMP text of one WebSocket message (SockJS: the a[...] array; its c[code, reason] is the close)."""
        if not self.sockjs:
            return [message]
        if message.startswith("a"):
            return [str(m) for m in json.loads(message[1:])]
        if message.startswith("c"):
            self.close_code = int(json.loads(message[1:])[0])
        return []

    @property
    def seqs(self) -> list[int]:
        return [int(m.group(1)) for f in self.frames if f.startswith("MESSAGE") and (m := re.search(r"\nseq:(\d+)", f))]

    def error(self) -> tuple[dict[str, str], str] | None:
        """The ERROR frame's headers and body, if one came."""
        for frame in self.frames:
            if frame.startswith("ERROR"):
                head, _, body = frame.partition("\n\n")
                headers = dict(line.split(":", 1) for line in head.splitlines()[1:])
                return headers, body
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def told_sse(viewer: SseViewer) -> dict[str, Any] | None:
    """The data of the SSE ``event: error`` the viewer got, if any."""
    for event in viewer.events:
        if event.event == "error":
            data: dict[str, Any] = json.loads(event.data)
            return data
    return None


def assert_told_by_admin(sse: list[SseViewer], stomp: list[StompViewer]) -> None:
    """Each viewer got exactly the told-why frame, resuming right after the last seq it saw, then the end."""
    for viewer in sse:
        told = told_sse(viewer)
        assert told is not None and told["error"] == "disconnected_by_admin", viewer.stages()[-3:]
        assert told["message"] and told["resumeFrom"] == viewer.seqs[-1]
        assert viewer.stages()[-1] == "error" and viewer.closed.is_set()
    for viewer in stomp:
        error = viewer.error()
        assert error is not None, viewer.frames[-2:]
        headers, body = error
        assert headers["message"] == "disconnected_by_admin"
        assert f"since-seq:{viewer.seqs[-1]}" in body
        assert viewer.frames[-1].startswith("ERROR") and viewer.closed.is_set()


def presence(gw: ServerProcess, conv: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{gw.url}/api/v1/conversation/presence/{conv}", headers=headers, timeout=5)


def admin_list(gw: ServerProcess, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
    return httpx.get(f"{gw.url}/api/v1/admin/conversations", params=params, headers=headers, timeout=5)


def admin_row(gw: ServerProcess, conv: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The conversation's row of the admin list, walking every page."""
    cursor = None
    while True:
        body = admin_list(gw, headers, limit=50, **({"cursor": cursor} if cursor else {})).json()
        for row in body["conversations"]:
            if row["conversationId"] == conv:
                return dict(row)
        cursor = body["next"]
        if cursor is None:
            return None


def disconnect(gw: ServerProcess, conv: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.delete(f"{gw.url}/api/v1/admin/conversations/{conv}/viewers", headers=headers, timeout=5)


def metric(gw: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" ([0-9.e+]+)", text)
    return float(found.group(1)) if found else 0.0


def test_memory_mode_presence_admin_list_and_disconnect(gateway: ServerProcess, conv: str) -> None:
    async def main() -> None:
        sse = [SseViewer(gateway.url, conv).start() for _ in range(2)]
        for v in sse:
            await v.wait_connected()
        stomp = [
            await StompViewer(gateway.url, conv).start(),
            await StompViewer(gateway.url, conv, sockjs=True).start(),
        ]
        expected = {"sse": 2, "sockjs-websocket": 1, "websocket": 1}
        await eventually(lambda: presence(gateway, conv).json()["byTransport"] == expected, 5, "presence")
        body = presence(gateway, conv).json()
        assert body["conversationId"] == conv and body["viewers"] == 4
        # Auth mode none: subjects are listed (everyone is "anonymous" there).
        assert sorted(s["transport"] for s in body["subjects"]) == ["sockjs-websocket", "sse", "sse", "websocket"]
        assert all(s["subject"] == "anonymous" and ISO.match(s["since"]) for s in body["subjects"])
        nobody = presence(gateway, str(uuid.uuid4())).json()
        assert nobody["viewers"] == 0 and nobody["byTransport"] == {} and nobody["subjects"] == []

        assert submit(gateway, conv, "presence turn [deltas=8]").status_code == 202
        for v in sse:
            await v.wait_for_stage("ENGINE_RETURN")
        for s in stomp:
            await eventually(lambda s=s: len(s.seqs) == len(sse[0].seqs), 5, "stomp viewers caught up")
        assert_dense(sse[0].seqs)
        row = await eventually(lambda: admin_row(gateway, conv), 5, "conversation in the admin list")
        assert row["viewers"] == 4 and row["byTransport"] == expected
        upstream = row["upstream"]
        assert upstream["state"] == "live" and upstream["holder"] and upstream["reconnects"] == 0
        assert 0 <= upstream["lastEventAgeMs"] < 10_000 and ISO.match(upstream["connectedSince"])
        assert row["journal"] == {"oldest": sse[0].seqs[0], "newest": sse[0].seqs[-1]}
        assert row["turn"]["number"] == 1 and row["turn"]["running"] is False
        assert isinstance(row["turn"]["ttftMs"], int) and 0 <= row["turn"]["ttftMs"] < 5000
        await eventually(lambda: metric(gateway, "hqgw_presence_viewers", transport="sse") >= 2, 5, "metrics")

        assert disconnect(gateway, conv).json() == {"disconnected": 4}
        for v in [*sse, *stomp]:
            await asyncio.wait_for(v.closed.wait(), 5)
        assert_told_by_admin(sse, stomp)
        await eventually(lambda: presence(gateway, conv).json()["viewers"] == 0, 5, "presence emptied")
        assert metric(gateway, "hqgw_viewer_disconnects_total", reason="disconnected_by_admin") >= 4
        assert stomp[0].close_code == stomp[1].close_code == 1008  # ERROR, then the close (SockJS: c[1008, …])
        for v in sse:
            await v.stop()

    asyncio.run(main())


def test_admin_list_pages_and_refuses_bad_input(gateway: ServerProcess) -> None:
    convs = sorted(str(uuid.uuid4()) for _ in range(3))

    async def main() -> None:
        viewers = [SseViewer(gateway.url, c).start() for c in convs]
        for v in viewers:
            await v.wait_connected()
        await eventually(lambda: all(admin_row(gateway, c) for c in convs), 5, "all listed")
        seen: list[str] = []
        cursor = None
        while True:
            body = admin_list(gateway, limit=1, **({"cursor": cursor} if cursor else {})).json()
            assert len(body["conversations"]) <= 1
            seen += [r["conversationId"] for r in body["conversations"]]
            cursor = body["next"]
            if cursor is None:
                break
        assert seen == sorted(seen) and len(seen) == len(set(seen)) and set(convs) <= set(seen)
        for bad in ({"limit": "x"}, {"cursor": "not-a-uuid"}):
            r = admin_list(gateway, **bad)
            assert r.status_code == 400 and r.json()["error"] == "bad_request"
        assert presence(gateway, "nope").status_code == 400
        for v in viewers:
            await v.stop()

    asyncio.run(main())


@pytest.fixture(scope="module")
def jwt_gateway(logs: Path, simulator: ServerProcess) -> Iterator[ServerProcess]:
    gw = _gateway(logs, simulator.url, **JWT_ENV)
    yield gw
    gw.stop()


def test_jwt_presence_subjects_for_admin_only_and_admin_api_refusals(jwt_gateway: ServerProcess, conv: str) -> None:
    user, admin = mint([conv]), mint("*", scope="admin", sub="ops")

    async def main() -> None:
        sse = SseViewer(jwt_gateway.url, conv, headers=bearer(mint([conv], sub="carol"))).start()
        await sse.wait_connected()
        stomp = await StompViewer(jwt_gateway.url, conv, passcode=mint([conv], sub="dave")).start()
        await eventually(lambda: presence(jwt_gateway, conv, bearer(user)).json()["viewers"] == 2, 5, "presence")
        # A user sees how many watch, not who.
        as_user = presence(jwt_gateway, conv, bearer(user)).json()
        assert as_user == {"conversationId": conv, "viewers": 2, "byTransport": {"sse": 1, "websocket": 1}}
        as_admin = presence(jwt_gateway, conv, bearer(admin)).json()
        assert sorted((s["subject"], s["transport"]) for s in as_admin["subjects"]) == [
            ("carol", "sse"),
            ("dave", "websocket"),
        ]
        # Presence follows the watch rules: no token 401, another conversation's token 403.
        assert presence(jwt_gateway, conv).status_code == 401
        other = presence(jwt_gateway, conv, bearer(mint([str(uuid.uuid4())])))
        assert other.status_code == 403 and other.json()["error"] == "forbidden"
        # Only admin may list or disconnect: a JSON 403 (401 without a token) otherwise.
        for response in (admin_list(jwt_gateway, bearer(user)), disconnect(jwt_gateway, conv, bearer(user)),
                         disconnect(jwt_gateway, conv, bearer(mint([conv], scope="integrator")))):  # fmt: skip
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "forbidden" and "admin" in response.json()["message"]
        assert admin_list(jwt_gateway).status_code == 401
        assert disconnect(jwt_gateway, conv).status_code == 401
        assert not sse.closed.is_set() and not stomp.closed.is_set()  # refusals ended nobody
        row = admin_row(jwt_gateway, conv, bearer(admin))
        assert row is not None and row["viewers"] == 2
        # An admin restricted to other conversations does not see this one.
        narrow = admin_list(jwt_gateway, bearer(mint([str(uuid.uuid4())], scope="admin"))).json()
        assert conv not in [r["conversationId"] for r in narrow["conversations"]]
        assert disconnect(jwt_gateway, conv, bearer(admin)).json() == {"disconnected": 2}
        await asyncio.wait_for(sse.closed.wait(), 5)
        await asyncio.wait_for(stomp.closed.wait(), 5)
        assert told_sse(sse) is not None and told_sse(sse)["error"] == "disconnected_by_admin"  # type: ignore[index]
        error = stomp.error()
        assert error is not None and error[0]["message"] == "disconnected_by_admin"
        await sse.stop()

    asyncio.run(main())
