"""The gateway's connection layer as an operator and a hostile client see it: which server hooks run
(start log line, hqgw_server_hooks), and request heads that arrive too slowly (issue 16)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from gateway.transports.server_hooks import HOOKS
from tests.integration.conftest import StartGateway
from tests.servers import ServerProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


def hooks_metric(gw: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{gw.url}/metrics", timeout=TIMEOUT_S).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hqgw_server_hooks{"):
            name, value = line.split(" ")
            out[name.split('"')[1]] = float(value)
    return out


@pytest.mark.parametrize("setting", ["on", "off"])
def test_start_log_and_metric_say_which_hooks_run(start_gateway: StartGateway, simulator: ServerProcess,
                                                  setting: str) -> None:  # fmt: skip
    gw = start_gateway(simulator.url, GATEWAY_SERVER_HOOKS=setting)
    assert hooks_metric(gw) == dict.fromkeys(HOOKS, 1.0 if setting == "on" else 0.0)
    expected = "server hooks on: abort, " if setting == "on" else "server hooks off (GATEWAY_SERVER_HOOKS=off)"
    wait_until(lambda: expected in gw.log(), TIMEOUT_S, what=f"the start line {expected!r}")


class SlowHead:
    """A client sending a request head one byte every ``interval`` seconds, recording what comes back."""

    def __init__(self, port: int, interval: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.answer = b""
        self.closed_after: float | None = None
        self._interval = interval
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: " + b"a" * 10_000
        self.sock.settimeout(self._interval)
        try:
            for byte in head:
                try:
                    self.sock.sendall(bytes((byte,)))
                except OSError:
                    break
                try:
                    chunk = self.sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self.answer += chunk
        finally:
            self.closed_after = time.monotonic() - self._started

    def join(self) -> None:
        self._thread.join(TIMEOUT_S + 30)
        self.sock.close()


def test_slow_heads_are_answered_408_and_closed_while_a_viewer_is_served(
    start_gateway: StartGateway, simulator: ServerProcess
) -> None:
    gw = start_gateway(simulator.url, GATEWAY_SERVER_HOOKS="on", GATEWAY_LIMITS_REQUEST_HEAD_TIMEOUT_S="0.5")
    port = int(gw.url.rsplit(":", 1)[1])
    slow = [SlowHead(port, interval=0.05) for _ in range(20)]
    try:
        with httpx.Client(timeout=TIMEOUT_S) as client:  # a normal client meanwhile
            assert client.get(f"{gw.url}/healthz").status_code == 200
    finally:
        for s in slow:
            s.join()
    for s in slow:
        assert s.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), s.answer[:80]
        assert s.closed_after is not None and 0.4 < s.closed_after < 5.0
    metrics = httpx.get(f"{gw.url}/metrics", timeout=TIMEOUT_S).text
    assert 'hqgw_refusals_total{reason="request_head_timeout"} 20.0' in metrics


def test_incomplete_heads_count_toward_the_per_address_limit(
    start_gateway: StartGateway, simulator: ServerProcess
) -> None:
    gw = start_gateway(simulator.url, GATEWAY_SERVER_HOOKS="on", GATEWAY_LIMITS_REQUEST_HEAD_TIMEOUT_S="30",
                       GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT="5")  # fmt: skip
    port = int(gw.url.rsplit(":", 1)[1])
    half_open = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) for _ in range(5)]
    try:
        for sock in half_open:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nho")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as refused:
            answer = b""
            while chunk := refused.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        for sock in half_open[:1]:  # one completes its head: a place frees up
            sock.sendall(b"st: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        with httpx.Client(timeout=TIMEOUT_S) as client:
            assert client.get(f"{gw.url}/healthz").status_code == 200
    finally:
        for sock in half_open:
            sock.close()
    metrics = httpx.get(f"{gw.url}/metrics", timeout=TIMEOUT_S).text
    assert 'hqgw_refusals_total{reason="too_many_incomplete_heads"} 1.0' in metrics
