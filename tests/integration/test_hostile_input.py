"""Hypothesis-driven hostile input against a running gateway, while two viewers keep receiving.

Malformed STOMP frames (raw WebSocket), SockJS bodies (xhr_send and framed WebSocket), SSE attach
headers and parameters, REST bodies and raw HTTP bytes, for a bounded number of examples each. The
server must answer every one with a status or an ERROR frame, stay up, and the viewers must see every
envelope of the turns that ran meanwhile, in order, as the journal has them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stomp
import websockets.sync.client as ws_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import WebSocketException

from gateway.protocols.sse import SseParser
from tests.clients import assert_dense
from tests.integration.conftest import _gateway
from tests.integration.test_auth import JWT_ENV, mint
from tests.servers import ServerProcess
from tests.waiting import wait_until

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: CI must not fail on a draw it never saw before
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
WS_TIMEOUT = 0.05

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
anything = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@pytest.fixture(scope="module")
def fuzz_gateway(logs: Path, simulator: ServerProcess) -> Iterator[ServerProcess]:
    gw = _gateway(logs, simulator.url, **JWT_ENV, GATEWAY_STOMP_CONNECT_TIMEOUT_S="0.5")
    yield gw
    gw.stop()


class SseReader(threading.Thread):
    """A plain SSE viewer in a thread: records every event until told to stop."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.events: list[Any] = []
        self.stopping = False

    def run(self) -> None:
        parser = SseParser()
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=httpx.Timeout(5, read=None)) as c, c.stream("GET", self.url, headers=headers) as r:
            for chunk in r.iter_raw():
                self.events.extend(parser.feed(chunk))
                if self.stopping:
                    return


class Listener(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.errors: list[Any] = []
        self.receipts: list[str] = []

    def on_receipt(self, frame: Any) -> None:
        self.receipts.append(frame.headers["receipt-id"])

    def on_message(self, frame: Any) -> None:
        self.seqs.append(int(frame.headers["seq"]))

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.body)


def receipts_in(frames: list[str | bytes]) -> list[str]:
    """The receipt header values the client itself sent (the server echoes them in receipt-id)."""
    texts = (f if isinstance(f, str) else f.decode("utf-8", "replace") for f in frames)
    return [
        line[len("receipt:") :] for t in texts for line in t.split("\n") if line.startswith("receipt:") and line[8:]
    ]


def stomp_frame(command: str, headers: list[tuple[str, str]], body: str, nul: bool) -> str:
    return command + "\n" + "".join(f"{k}:{v}\n" for k, v in headers) + "\n" + body + ("\x00" if nul else "")


def test_fuzzing_leaves_the_server_up_and_other_viewers_whole(fuzz_gateway: ServerProcess, conv: str) -> None:
    gw = fuzz_gateway
    admin = mint("*", "admin", submit=True)
    viewer_token = mint([conv], "integrator")
    no_submit = mint("*", "user")
    host, port = gw.url.removeprefix("http://").split(":")
    ws_url = f"ws://{host}:{port}/ws-convengine"
    destination = f"/topic/convengine/audit/{conv}"

    # Two viewers on the conversation: SSE in a thread, STOMP via stomp.py.
    sse = SseReader(f"{gw.url}/api/v1/conversation/stream/{conv}", viewer_token)
    sse.start()
    conn = stomp.WSStompConnection([(host, int(port))], ws_path="/ws-convengine", heartbeats=(0, 0))
    listener = Listener()
    conn.set_listener("l", listener)
    conn.connect(passcode=viewer_token, wait=True)
    conn.subscribe(destination, id="viewer", ack="auto", headers={"receipt": "subscribed"})
    wait_until(lambda: "subscribed" in listener.receipts, 10, what="the SUBSCRIBE's RECEIPT")

    def turn(text: str) -> None:
        body = {"conversationId": conv, "message": text}
        r = httpx.post(f"{gw.url}/api/v1/conversation/message", json=body, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 202, r.text

    turn("during the fuzzing [deltas=300] [interval_ms=20] [tools=3]")

    # -- STOMP over a raw WebSocket ------------------------------------------------------------
    commands = (
        st.sampled_from(
            [
                "CONNECT",
                "STOMP",
                "SUBSCRIBE",
                "UNSUBSCRIBE",
                "SEND",
                "ACK",
                "NACK",
                "BEGIN",
                "COMMIT",
                "DISCONNECT",
                "MESSAGE",
                "connect",
                "",
            ]
        )
        | printable
    )
    names = (
        st.sampled_from(
            [
                "accept-version",
                "host",
                "passcode",
                "login",
                "Authorization",
                "destination",
                "id",
                "receipt",
                "since-seq",
                "scope",
                "heart-beat",
                "content-length",
                "ack",
            ]
        )
        | anything
    )
    values = (
        st.sampled_from(
            [
                "1.2",
                "1.0,1.1,1.2",
                destination,
                f"/topic/convengine/audit/{uuid.uuid4()}",
                "/topic/x",
                admin,
                f"Bearer {viewer_token}",
                "0",
                "-1",
                "99999999999999999999",
                "10,10",
                "user",
                "\\c\\n\\r\\t",
            ]
        )
        | anything
    )
    frames = st.builds(stomp_frame, commands, st.lists(st.tuples(names, values), max_size=8), anything, st.booleans())

    @FUZZ
    @given(
        prefix=st.sampled_from(["", "valid", "no-token"]),
        frames=st.lists(frames | st.binary(max_size=300), min_size=1, max_size=5),
        huge=st.sampled_from([0, 0, 0, 70_000]),
    )
    def fuzz_stomp(prefix: str, frames: list[str | bytes], huge: int) -> None:
        try:
            with ws_sync.connect(ws_url, subprotocols=["v12.stomp"], open_timeout=5, close_timeout=1) as ws:  # type: ignore[list-item]
                if prefix:
                    ws.send(
                        stomp_frame(
                            "CONNECT",
                            [("accept-version", "1.2")] + ([("passcode", viewer_token)] if prefix == "valid" else []),
                            "",
                            True,
                        )
                    )
                if huge:
                    ws.send("SEND\ndestination:/x\n\n" + "x" * huge + "\x00")
                for frame in frames:
                    ws.send(frame)
                deadline = time.monotonic() + 0.3
                while time.monotonic() < deadline:
                    try:
                        out = ws.recv(timeout=WS_TIMEOUT)
                    except TimeoutError:
                        break
                    text = str(out)
                    for echoed in receipts_in(frames):  # a client's own receipt id comes back, as STOMP requires
                        text = text.replace(f"receipt-id:{echoed}", "receipt-id:")
                    assert admin not in text and viewer_token not in text
        except WebSocketException:
            pass  # closed by the server: an ERROR frame or a close code, never a crash

    # -- SockJS: xhr_send bodies and framed WebSocket messages -----------------------------------
    sockjs_bodies = (
        st.binary(max_size=400)
        | st.lists(st.one_of(frames, anything), max_size=4).map(lambda xs: orjson.dumps(xs))
        | st.sampled_from([b"", b"[", b"[]", b'["CONNECT\\n\\n\\u0000"]', b'"x"', b"null", b"{}"])
    )

    @FUZZ
    @given(body=sockjs_bodies, framed_ws=st.booleans())
    def fuzz_sockjs(body: bytes, framed_ws: bool) -> None:
        sid = uuid.uuid4().hex
        base = f"{gw.url}/ws-convengine/000/{sid}"
        if framed_ws:
            try:
                with ws_sync.connect(f"ws://{host}:{port}/ws-convengine/000/{sid}/websocket", open_timeout=5) as ws:
                    ws.recv(timeout=1)  # "o"
                    ws.send(body.decode("utf-8", "replace"))
                    ws.recv(timeout=WS_TIMEOUT)
            except (WebSocketException, TimeoutError):
                pass
            return
        with httpx.Client(timeout=5) as c:
            assert c.post(f"{base}/xhr").status_code == 200
            r = c.post(f"{base}/xhr_send", content=body, headers={"Content-Type": "text/plain"})
            assert r.status_code in (204, 400, 404, 413, 500), r.status_code  # 500: sockjs "Broken JSON encoding."

    # -- SSE attach: headers and parameters -------------------------------------------------------
    header_values = printable | st.sampled_from([f"Bearer {admin}", "Bearer ", "Bearer a.b.c", "-1", "1" * 30])

    @FUZZ
    @given(
        path_id=st.sampled_from([conv, str(uuid.uuid4()), "x", "%00", "../../etc"]) | printable,
        headers=st.dictionaries(
            st.sampled_from(["Authorization", "Last-Event-ID", "Cookie", "Origin", "Accept", "X-Anything"]),
            header_values,
            max_size=5,
        ),
        params=st.dictionaries(
            st.sampled_from(["since_seq", "access_token", "scope", "snapshot", "coalesce"]), printable, max_size=4
        ),
    )
    def fuzz_sse(path_id: str, headers: dict[str, str], params: dict[str, str]) -> None:
        url = f"{gw.url}/api/v1/conversation/stream/{path_id}"
        try:
            with httpx.Client(timeout=5) as c, c.stream("GET", url, headers=headers, params=params) as r:
                # 307: a path ending in "/" is redirected by the router, which is an answer, not a crash.
                assert r.status_code in (200, 307, 400, 401, 403, 404, 405), r.status_code
                if r.status_code != 200:
                    assert admin not in r.read().decode()
        except (httpx.InvalidURL, httpx.LocalProtocolError):
            pass  # the client refused to send it (raw bytes are fuzzed below)

    # -- REST bodies and raw HTTP ------------------------------------------------------------------
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | anything,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(anything, inner, max_size=4),
        max_leaves=20,
    )
    submissions = st.fixed_dictionaries(
        {"conversationId": st.sampled_from([conv, "nope"]) | anything, "message": json_values},
        optional={"inputParams": json_values, "idempotencyKey": json_values, "attachments": json_values},
    )

    def encode(value: Any) -> bytes:
        return json.dumps(value).encode()  # json: integers beyond 64 bits too

    rest_bodies = st.binary(max_size=500) | json_values.map(encode) | submissions.map(encode)

    @FUZZ
    @given(body=rest_bodies, raw=st.binary(min_size=1, max_size=300), raw_mode=st.booleans())
    def fuzz_rest(body: bytes, raw: bytes, raw_mode: bool) -> None:
        if raw_mode:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(raw + b"\r\n\r\n")
                sock.settimeout(0.3)
                try:
                    reply = sock.recv(64)
                except TimeoutError:
                    reply = b""
                assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply
            return
        headers = {"Authorization": f"Bearer {no_submit}", "Content-Type": "application/json"}
        r = httpx.post(f"{gw.url}/api/v1/conversation/message", content=body, headers=headers, timeout=5)
        assert r.status_code in (400, 403, 413), (r.status_code, r.text)
        assert no_submit not in r.text

    started = time.monotonic()
    fuzz_stomp()
    fuzz_sockjs()
    fuzz_sse()
    fuzz_rest()
    fuzz_elapsed = time.monotonic() - started
    assert gw.alive

    # The viewers lost nothing: a second turn after the fuzzing, then compare with the journal.
    turn("after the fuzzing [deltas=5]")

    def journal() -> list[int]:
        r = httpx.get(
            f"{gw.url}/api/v1/conversation/audit/{conv}?limit=1000", headers={"Authorization": f"Bearer {admin}"}
        )
        return [item["auditId"] or item["verbose"]["verboseId"] for item in r.json()["items"]]

    def caught_up() -> list[int] | None:
        seqs = journal()
        stages = [e.event for e in sse.events]
        done = stages.count("ENGINE_RETURN") >= 2 and listener.seqs[-1:] == seqs[-1:] and len(sse.events) == len(seqs)
        return seqs if done else None

    seqs = wait_until(caught_up, 60, interval=0.1, what="both viewers caught up with the journal")
    sse.stopping = True
    assert_dense(seqs)
    assert [int(e.id) for e in sse.events] == seqs
    assert listener.seqs == seqs and not listener.errors
    conn.disconnect()
    log = gw.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    print(f"fuzzing took {fuzz_elapsed:.1f}s; {len(seqs)} envelopes delivered to both viewers")
