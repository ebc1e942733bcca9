"""SockJS over real sockets: uvicorn on a free port, httpx and the ``websockets`` client as viewers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.sockjs_echo_app import GOOD_ORIGIN, EchoApp, build
from tests.servers import wait_until

pytestmark = pytest.mark.integration
TIMEOUT_S = 5.0
NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"


@dataclass
class Running:
    """A served echo app: its base URLs, its event loop (to run server-side coroutines) and state."""

    http: str
    ws: str
    loop: asyncio.AbstractEventLoop
    echo: EchoApp

    def url(self, service: str, transport: str, session: str | None = None) -> str:
        return f"{self.http}{service}/000/{session or uuid.uuid4().hex}/{transport}"


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; the bound socket goes to uvicorn
    port = sock.getsockname()[1]
    echo = build()
    config = uvicorn.Config(echo.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3)
    userver = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await userver.serve(sockets=[sock])

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    wait_until(lambda: userver.started, TIMEOUT_S)
    try:
        yield Running(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", loops[0], echo)
    finally:
        userver.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT_S) as c:
        yield c


def ws_connect(url: str, origin: str | None = None) -> ClientConnection:
    return connect(url, open_timeout=TIMEOUT_S, origin=origin)  # type: ignore[arg-type]


def recv(ws: ClientConnection) -> str:
    message = ws.recv(timeout=TIMEOUT_S)
    assert isinstance(message, str)
    return message


class Stream:
    """Reads an open streaming response piece by piece (each read bounded by the client timeout)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_raw()
        self._buf = b""

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self._buf:
            self._buf += next(self._chunks)
        head, _, self._buf = self._buf.partition(sep)
        return head + sep

    def at_end(self) -> bool:
        return not self._buf and next(self._chunks, None) is None


# -- /info and static answers --------------------------------------------------------------------


def test_info(server: Running, client: httpx.Client) -> None:
    r = client.get(f"{server.http}/echo/info", headers={"Origin": "http://viewer.example"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    assert r.headers["cache-control"] == NO_CACHE
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "set-cookie" not in r.headers
    info = r.json()
    assert info["websocket"] is True and info["cookie_needed"] is False and info["origins"] == ["*:*"]
    assert 0 <= info["entropy"] < 2**32
    assert client.get(f"{server.http}/echo/info").json()["entropy"] != info["entropy"]
    assert client.get(f"{server.http}/echo/info").headers["access-control-allow-origin"] == "*"
    assert client.get(f"{server.http}/cookie/info").json()["cookie_needed"] is True


def test_options_preflight(server: Running, client: httpx.Client) -> None:
    headers = {"Origin": "null", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "a, b"}
    for url, methods in [
        (f"{server.http}/echo/info", "OPTIONS, GET"),
        (server.url("/echo", "xhr"), "OPTIONS, POST"),
        (server.url("/echo", "xhr_send"), "OPTIONS, POST"),
        (server.url("/echo", "xhr_streaming"), "OPTIONS, POST"),
    ]:
        r = client.options(url, headers=headers)
        assert r.status_code == 204 and not r.content
        assert r.headers["cache-control"] == "public, max-age=31536000"
        assert r.headers["expires"] and int(r.headers["access-control-max-age"]) > 1_000_000
        assert r.headers["access-control-allow-methods"] == methods
        assert r.headers["access-control-allow-origin"] == "null"
        assert r.headers["access-control-allow-headers"] == "a, b"


def test_greeting_and_not_found(server: Running, client: httpx.Client) -> None:
    assert client.get(f"{server.http}/echo").text == "Welcome to SockJS!\n"
    assert client.get(f"{server.http}/echo/").text == "Welcome to SockJS!\n"
    for suffix in ["/a", "/a.html", "/iframe.html", "/a/a", "/a./a/xhr", "/a/a./xhr", "/a/a/jsonp"]:
        assert client.post(f"{server.http}/echo{suffix}").status_code == 404, suffix
    assert client.get(server.url("/echo", "xhr")).status_code == 405
    r = client.post(server.url("/echo", "websocket"))
    assert r.status_code == 405 and r.headers["allow"] == "GET" and "content-type" not in r.headers
    assert client.get(server.url("/echo", "websocket")).status_code == 400


# -- websocket transports ------------------------------------------------------------------------


def test_websocket_echo_burst_and_close(server: Running) -> None:
    with ws_connect(server.url("/echo", "websocket").replace("http", "ws")) as ws:
        assert recv(ws) == "o"
        ws.send('["a"]')
        assert recv(ws) == 'a["a"]'
        ws.send("")  # sockjs-protocol: empty frames and empty arrays are ignored
        ws.send("[]")
        ws.send('"single\u2028"')
        assert recv(ws) == 'a["single\\u2028"]'
        ws.send('["burst:3"]')
        assert recv(ws) == 'a["m0","m1","m2"]'  # one send_many, one frame
        ws.send('["close!"]')
        assert recv(ws) == 'c[3000,"Go away!"]'
        with pytest.raises(ConnectionClosed):
            recv(ws)
    info = next(i for i in reversed(server.echo.log.opened) if i.transport == "sockjs-websocket")
    assert info.client.startswith("127.0.0.1:") and "host" in info.headers


def test_websocket_heartbeat(server: Running) -> None:
    with ws_connect(server.url("/fast", "websocket").replace("http", "ws")) as ws:
        assert recv(ws) == "o"
        assert recv(ws) == "h"  # heartbeat_s=0.3 on /fast
        ws.send('["x"]')
        assert recv(ws) == 'a["x"]'
        assert recv(ws) == "h"


def test_websocket_broken_json_ends_the_session(server: Running) -> None:
    with ws_connect(server.url("/echo", "websocket").replace("http", "ws")) as ws:
        assert recv(ws) == "o"
        ws.send('["a')
        with pytest.raises(ConnectionClosed) as info:
            recv(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 3000


def test_websocket_close_reports_on_close(server: Running) -> None:
    closed_before = server.echo.log.closed.count("sockjs-websocket")
    with ws_connect(server.url("/echo", "websocket").replace("http", "ws")) as ws:
        assert recv(ws) == "o"
    wait_until(lambda: server.echo.log.closed.count("sockjs-websocket") > closed_before, TIMEOUT_S)


def test_raw_websocket(server: Running) -> None:
    with ws_connect(f"{server.ws}/echo/websocket") as ws:
        ws.send("Hello world!\uffff")
        assert recv(ws) == "Hello world!\uffff"
        ws.send("burst:2")
        assert [recv(ws), recv(ws)] == ["m0", "m1"]  # raw: one WebSocket message per protocol message
        ws.send("close!")
        with pytest.raises(ConnectionClosed) as info:
            recv(ws)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (3000, "Go away!")


def test_websocket_origin_refused(server: Running) -> None:
    for url in [server.url("/strict", "websocket").replace("http", "ws"), f"{server.ws}/strict/websocket"]:
        with pytest.raises(InvalidStatus) as info:
            ws_connect(url, origin="http://evil.example")
        assert info.value.response.status_code == 403
    with ws_connect(f"{server.ws}/strict/websocket", origin=GOOD_ORIGIN) as ws:
        ws.send("ok")
        assert recv(ws) == "ok"


# -- HTTP transports -----------------------------------------------------------------------------


def test_xhr_polling_and_xhr_send(server: Running, client: httpx.Client) -> None:
    url = server.url("/echo", "xhr").removesuffix("/xhr")
    r = client.post(f"{url}/xhr", headers={"Origin": "http://viewer.example"})
    assert (r.status_code, r.text) == (200, "o\n")
    assert r.headers["content-type"] == "application/javascript; charset=UTF-8"
    assert r.headers["cache-control"] == NO_CACHE
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    r = client.post(f"{url}/xhr_send", content='["x"]', headers={"Content-Type": "T"})
    assert (r.status_code, r.content) == (204, b"")
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"
    client.post(f"{url}/xhr_send", content='["y","\\u2028"]')
    assert client.post(f"{url}/xhr").text == 'a["x","y","\\u2028"]\n'
    assert client.post(f"{url}/xhr_send", content="[]").status_code == 204


def test_xhr_polling_heartbeat_and_session_timeout(server: Running, client: httpx.Client) -> None:
    url = server.url("/fast", "xhr").removesuffix("/xhr")
    closed_before = server.echo.log.closed.count("xhr-polling")
    assert client.post(f"{url}/xhr").text == "o\n"
    assert client.post(f"{url}/xhr").text == "h\n"  # a quiet poll is answered with a heartbeat
    assert client.post(f"{url}/xhr_send", content="[]").status_code == 204
    # disconnect_delay_s=0.5 on /fast: without a receiver the session expires and its handler hears.
    wait_until(lambda: client.post(f"{url}/xhr_send", content="[]").status_code == 404, TIMEOUT_S)
    wait_until(lambda: server.echo.log.closed.count("xhr-polling") > closed_before, TIMEOUT_S)
    assert client.post(f"{url}/xhr").text == "o\n"  # the same id now opens a new session


def test_xhr_send_errors(server: Running, client: httpx.Client) -> None:
    url = server.url("/echo", "xhr").removesuffix("/xhr")
    assert client.post(f"{url}/xhr_send", content='["x"]').status_code == 404
    assert client.post(f"{url}/xhr").text == "o\n"
    r = client.post(f"{url}/xhr_send", content='["x')
    assert (r.status_code, r.text) == (500, "Broken JSON encoding.")
    r = client.post(f"{url}/xhr_send", content="")
    assert (r.status_code, r.text) == (500, "Payload expected.")
    assert client.post(f"{url}/xhr_send", content='["a"]').status_code == 204
    assert client.post(f"{url}/xhr").text == 'a["a"]\n'
    r = client.post(f"{url}/xhr_send", content=json.dumps(["x" * 70_000]))
    assert r.status_code == 413  # over max_message_bytes: refused, and the session is closed
    assert client.post(f"{url}/xhr").text == 'c[1009,"Message too big"]\n'


def test_second_receiver_and_interrupted_poll(server: Running, client: httpx.Client) -> None:
    url = server.url("/echo", "xhr").removesuffix("/xhr")
    assert client.post(f"{url}/xhr").text == "o\n"
    with httpx.Client(timeout=TIMEOUT_S) as other, other.stream("POST", f"{url}/xhr") as waiting:
        assert waiting.status_code == 200  # headers arrive once the receiver is attached
        r = client.post(f"{url}/xhr")
        assert r.text == 'c[2010,"Another connection still open"]\n'
    # The waiting poll was aborted by its client: the session is closed as interrupted.
    wait_until(lambda: client.post(f"{url}/xhr").text == 'c[1002,"Connection interrupted"]\n', TIMEOUT_S)


def test_xhr_streaming(server: Running, client: httpx.Client) -> None:
    url = server.url("/echo", "xhr").removesuffix("/xhr")
    with client.stream("POST", f"{url}/xhr_streaming", headers={"Origin": "http://viewer.example"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/javascript; charset=UTF-8"
        assert r.headers["access-control-allow-credentials"] == "true"
        stream = Stream(r)
        assert stream.read_until(b"\n") == b"h" * 2048 + b"\n"
        assert stream.read_until(b"\n") == b"o\n"
        assert client.post(f"{url}/xhr_send", content='["x"]').status_code == 204
        assert stream.read_until(b"\n") == b'a["x"]\n'
        with client.stream("POST", f"{url}/xhr_streaming") as second:
            second_stream = Stream(second)
            second_stream.read_until(b"\n")  # prelude
            assert second_stream.read_until(b"\n") == b'c[2010,"Another connection still open"]\n'
            assert second_stream.at_end()
        client.post(f"{url}/xhr_send", content='["close!"]')
        assert stream.read_until(b"\n") == b'c[3000,"Go away!"]\n'
        assert stream.at_end()


def test_xhr_streaming_heartbeat_and_response_limit(server: Running, client: httpx.Client) -> None:
    url = server.url("/fast", "xhr").removesuffix("/xhr")
    with client.stream("POST", f"{url}/xhr_streaming") as r:
        stream = Stream(r)
        stream.read_until(b"\n")
        assert stream.read_until(b"\n") == b"o\n"
        assert stream.read_until(b"\n") == b"h\n"
        big = "x" * 4096  # response_limit=4096 on /fast: the response ends after this frame
        assert client.post(f"{url}/xhr_send", content=json.dumps([big])).status_code == 204
        assert stream.read_until(b"\n") == f'a["{big}"]\n'.encode()
        assert stream.at_end()
    assert client.post(f"{url}/xhr_send", content='["again"]').status_code == 204  # session lives on
    assert client.post(f"{url}/xhr").text == 'a["again"]\n'


def test_queue_overflow_closes_the_session(server: Running, client: httpx.Client) -> None:
    url = server.url("/fast", "xhr").removesuffix("/xhr")
    assert client.post(f"{url}/xhr").text == "o\n"
    assert client.post(f"{url}/xhr_send", content='["burst:6"]').status_code == 204  # max_queue=5
    assert client.post(f"{url}/xhr").text == 'c[1013,"Send queue overflow"]\n'


def test_eventsource(server: Running, client: httpx.Client) -> None:
    url = server.url("/echo", "xhr").removesuffix("/xhr")
    with client.stream("GET", f"{url}/eventsource", headers={"Origin": "null"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == NO_CACHE
        assert r.headers["access-control-allow-origin"] == "*"
        stream = Stream(r)
        assert stream.read_until(b"\r\n") == b"\r\n"
        assert stream.read_until(b"\r\n\r\n") == b"data: o\r\n\r\n"
        client.post(f"{url}/xhr_send", content='["x", "  \\u0000\\n\\r ", "100%"]')
        frame = stream.read_until(b"\r\n\r\n")
        assert frame == b'data: a["x","  \\u0000\\n\\r ","100%25"]\r\n\r\n'


def test_closed_session_answers_go_away(server: Running, client: httpx.Client) -> None:
    url = server.url("/close", "xhr").removesuffix("/xhr")
    assert client.post(f"{url}/xhr").text == "o\n"
    assert client.post(f"{url}/xhr").text == 'c[3000,"Go away!"]\n'
    assert client.post(f"{url}/xhr").text == 'c[3000,"Go away!"]\n'
    with ws_connect(server.url("/close", "websocket").replace("http", "ws")) as ws:
        assert recv(ws) == "o"
        assert recv(ws) == 'c[3000,"Go away!"]'


def test_http_origin_refused_and_cookie(server: Running, client: httpx.Client) -> None:
    evil = {"Origin": "http://evil.example"}
    assert client.get(f"{server.http}/strict/info", headers=evil).status_code == 403
    assert client.post(server.url("/strict", "xhr"), headers=evil).status_code == 403
    assert client.post(server.url("/strict", "xhr"), headers={"Origin": GOOD_ORIGIN}).text == "o\n"
    r = client.post(server.url("/cookie", "xhr"))
    assert r.headers["set-cookie"] == "JSESSIONID=dummy; path=/"
    r = client.post(server.url("/cookie", "xhr"), headers={"Cookie": "JSESSIONID=abc"})
    assert r.headers["set-cookie"] == "JSESSIONID=abc; path=/"


def test_close_all_says_go_away_to_every_session(server: Running, client: httpx.Client) -> None:
    bye = server.echo.servers["/bye"]
    url = server.url("/bye", "xhr").removesuffix("/xhr")
    closed_before = len(server.echo.log.closed)
    with (
        ws_connect(server.url("/bye", "websocket").replace("http", "ws")) as ws,
        client.stream("POST", f"{url}/xhr_streaming") as r,
    ):
        assert recv(ws) == "o"
        stream = Stream(r)
        stream.read_until(b"\n")
        assert stream.read_until(b"\n") == b"o\n"
        wait_until(lambda: bye.connection_count == 2, TIMEOUT_S)
        asyncio.run_coroutine_threadsafe(bye.close_all(), server.loop).result(TIMEOUT_S)
        assert recv(ws) == 'c[3000,"Go away!"]'
        with pytest.raises(ConnectionClosed) as info:
            recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert stream.read_until(b"\n") == b'c[3000,"Go away!"]\n'
        assert stream.at_end()
    assert bye.connection_count == 0
    wait_until(lambda: len(server.echo.log.closed) >= closed_before + 2, TIMEOUT_S)
    assert client.post(f"{url}/xhr").status_code == 503  # no new sessions after shutdown began
