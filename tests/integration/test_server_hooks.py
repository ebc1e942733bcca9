"""Contract tests of the uvicorn hooks (gateway/transports/uvicorn_hooks.py), one per hook.

Each runs a real uvicorn with the hook protocols (exactly as ``load_hooks`` builds them) and a tiny
ASGI app, and asserts the uvicorn behaviour the hook relies on, as a client sees it: a uvicorn
release that breaks a hook fails here rather than in production.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from gateway.transports.server import (
    abort_of,
    on_disconnect_of,
    send_text_nowait_of,
    write_body_nowait_of,
    write_frame_nowait_of,
    ws_text_frame,
)
from gateway.transports.server_hooks import HOOKS, load_hooks
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
HEAD_TIMEOUT_S = 0.5
MAX_HEAD_BYTES = 2048
HEADS_PER_ADDRESS = 4

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


@dataclass
class Running:
    port: int
    seen: dict[str, Any]  # what the app observed, for the hooks whose effect is inside the server

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def _app(seen: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
    path = scope.get("path", "")
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if path == "/abort":
            abort = abort_of(scope)
            assert abort is not None
            abort()
            return
        if path == "/nowait":
            send_text = send_text_nowait_of(scope)
            write_frame = write_frame_nowait_of(scope)
            seen["plain"] = write_frame is not None
            assert send_text is not None
            assert send_text("one") and send_text("twö".encode())
            if write_frame is not None:
                assert write_frame(ws_text_frame(b"three"))
            await send({"type": "websocket.send", "text": "end"})
        while True:  # echo until the client leaves: the lean receive queue, in order
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    if path == "/abort":
        abort = abort_of(scope)
        assert abort is not None
        abort()
        return
    if path == "/sse":
        write_body = write_body_nowait_of(scope)
        assert write_body is not None
        seen["before_start"] = write_body(b"too early")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        seen["streamed"] = write_body(b"data: one\n\n") and write_body(b"data: two\n\n")
        await send({"type": "http.response.body", "body": b"data: end\n\n", "more_body": False})
        seen["after_end"] = write_body(b"too late")
        return
    if path == "/watch":
        watch = on_disconnect_of(scope)
        assert watch is not None
        gone = asyncio.Event()
        watch(gone.set)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"watching\n", "more_body": True})
        await gone.wait()  # nobody calls receive(): only the hook can say the client left
        seen["gone"] = True
        return
    body = path.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serve(*, deflate: bool = False) -> Iterator[Running]:
    hooks = load_hooks(
        True, max_head_bytes=MAX_HEAD_BYTES, head_timeout_s=HEAD_TIMEOUT_S, max_heads_per_address=HEADS_PER_ADDRESS
    )
    assert hooks.active, hooks.reason
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _app(seen, scope, receive, send)

    config = uvicorn.Config(app, log_level="warning", lifespan="on", http=hooks.http, ws=hooks.ws,
                            ws_per_message_deflate=deflate, timeout_graceful_shutdown=2)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),), daemon=True)
    thread.start()
    wait_until(lambda: server.started, TIMEOUT_S, what="uvicorn started")
    try:
        yield Running(sock.getsockname()[1], seen)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    yield from _serve()


@pytest.fixture(scope="module")
def deflating_server() -> Iterator[Running]:
    yield from _serve(deflate=True)


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_every_hook_is_named_and_on_when_importable() -> None:
    hooks = load_hooks(True, max_head_bytes=MAX_HEAD_BYTES, head_timeout_s=1, max_heads_per_address=0)
    assert hooks.active and hooks.describe() == f"server hooks on: {', '.join(HOOKS)}"
    off = load_hooks(False, max_head_bytes=MAX_HEAD_BYTES, head_timeout_s=1, max_heads_per_address=0)
    assert not off.active and off.http == "h11" and "GATEWAY_SERVER_HOOKS=off" in off.describe()


# -- abort ------------------------------------------------------------------------------------------


def test_abort_drops_an_http_connection_without_an_answer(server: Running) -> None:
    with _raw(server.port) as sock:
        sock.sendall(b"GET /abort HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            answer = _read_all(sock)
        except ConnectionResetError:  # abort() sends RST when bytes are unread
            answer = b""
    assert answer == b""


def test_abort_drops_a_websocket_without_a_close_frame(server: Running) -> None:
    with connect(f"{server.ws}/abort", open_timeout=TIMEOUT_S) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd is None  # no close frame: the socket was dropped


# -- http_disconnect_watch ----------------------------------------------------------------------------


def test_disconnect_watch_hears_a_client_leave_a_streaming_response(server: Running) -> None:
    with _raw(server.port) as sock:
        sock.sendall(b"GET /watch HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while b"watching" not in got:
            got += sock.recv(4096)
        assert not server.seen.get("gone")
    wait_until(lambda: server.seen.get("gone") is True, TIMEOUT_S, what="the disconnect callback")


# -- sse_write_nowait --------------------------------------------------------------------------------


def test_sse_write_nowait_writes_chunks_of_the_started_stream_only(server: Running) -> None:
    with httpx.Client(timeout=TIMEOUT_S) as client:
        response = client.get(f"{server.http}/sse")
    assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
    assert response.text == "data: one\n\ndata: two\n\ndata: end\n\n"
    assert server.seen["before_start"] is False and server.seen["streamed"] is True
    # The app tries once more after the final chunk, which the client may have read before that.
    wait_until(lambda: "after_end" in server.seen, TIMEOUT_S, what="the write after the end")
    assert server.seen["after_end"] is False


# -- ws_send_nowait and ws_shared_frames -------------------------------------------------------------


def test_ws_nowait_writes_and_shared_frames_reach_the_client_in_order(server: Running) -> None:
    with connect(f"{server.ws}/nowait", open_timeout=TIMEOUT_S, compression=None) as ws:
        got = [ws.recv(timeout=TIMEOUT_S) for _ in range(4)]
    assert got == ["one", "twö", "three", "end"] and server.seen["plain"] is True


def test_shared_frames_are_refused_when_the_connection_compresses(deflating_server: Running) -> None:
    with connect(f"{deflating_server.ws}/nowait", open_timeout=TIMEOUT_S) as ws:  # offers permessage-deflate
        got = [ws.recv(timeout=TIMEOUT_S) for _ in range(3)]
    assert got == ["one", "twö", "end"] and deflating_server.seen["plain"] is False


# -- lean_connection_state ---------------------------------------------------------------------------


def test_lean_websocket_queue_delivers_every_message_in_order(server: Running) -> None:
    with connect(f"{server.ws}/echo", open_timeout=TIMEOUT_S, compression=None) as ws:
        for i in range(50):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=TIMEOUT_S) for _ in range(50)] == [f"m{i}" for i in range(50)]


def test_lean_pipeline_answers_pipelined_requests_in_order(server: Running) -> None:
    with _raw(server.port) as sock:
        requests = b"".join(b"GET /r%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(5))
        sock.sendall(requests + b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = _read_all(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 6
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in answer.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"/r0", b"/r1", b"/r2", b"/r3", b"/r4", b"/last"]


# -- request_head_limits -----------------------------------------------------------------------------


def test_a_head_too_large_is_answered_431(server: Running) -> None:
    with _raw(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEAD_BYTES + 10))
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b"request head too large\n")


def test_a_slow_head_is_answered_408_and_closed_while_others_are_served(server: Running) -> None:
    with _raw(server.port) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nhost")
        with httpx.Client(timeout=TIMEOUT_S) as client:  # a normal client meanwhile
            assert client.get(f"{server.http}/normal").text == "/normal"
        answer = _read_all(slow)  # ends when the server closes: HEAD_TIMEOUT_S after connecting
    assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"request head not completed in time\n")


def test_a_keep_alive_connections_next_slow_head_is_timed_too(server: Running) -> None:
    with _raw(server.port) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"/first"):
            got += sock.recv(4096)
        sock.sendall(b"GET /second HTTP/1.1\r\n")  # and never the rest
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_incomplete_heads_count_toward_the_per_address_limit(server: Running) -> None:
    half_open = [_raw(server.port) for _ in range(HEADS_PER_ADDRESS)]
    try:
        for sock in half_open:
            sock.sendall(b"GET / HT")
        with _raw(server.port) as one_more:
            assert _read_all(one_more).startswith(b"HTTP/1.1 429 ")
    finally:
        for sock in half_open:
            sock.close()
    # Once they are gone the address may open connections again.
    wait_until(lambda: _answer(server.port, b"GET /again HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
               .endswith(b"/again"), TIMEOUT_S, what="the address served again")  # fmt: skip


def _answer(port: int, request: bytes) -> bytes:
    with _raw(port) as sock:
        sock.sendall(request)
        return _read_all(sock)
