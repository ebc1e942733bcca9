"""The servers under test and the simulated HQ feeding them: start, account, stop.

Every target is fed by the same simulator: the gateway and the bare baselines open one upstream SSE
stream per conversation when the first viewer subscribes; RabbitMQ gets a publisher process that
follows the same streams and SENDs each event to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.procstat import rabbitmq_pid
from benchmarks.viewers import ViewerSpec
from tests.servers import ServerProcess, free_port, python_module, start_process

TOKEN = "hq_pat_bench_0123456789abcdef"
HOST = "127.0.0.1"
RABBIT_WS_PORT = 15674
RABBIT_CAP = 700  # the broker's 1,024-file soft limit stops it near 830 sockets (ANCHORS.md)
EXTRA_EVENTS_PER_TURN = 6  # status, agent_active, status, token_usage, final, done around the deltas


@dataclass(frozen=True, slots=True)
class Target:
    """One column of the comparison: which server, which viewer protocol."""

    name: str
    server: str  # gateway | ws-baseline | sse-baseline | rabbitmq
    kind: str  # viewer kind: stomp | sockjs | sse
    label: str
    cap: int = 0  # most viewers this target can take here (0: no cap)

    def limit(self, viewers: int) -> int:
        return min(viewers, self.cap) if self.cap else viewers

    def spec(
        self,
        port: int,
        conversation: str,
        group: str = "main",
        *,
        coalesce: bool = True,
        rcvbuf: int = 0,
        rate_bps: float = 0.0,
    ) -> ViewerSpec:
        common: dict[str, Any] = {"group": group, "rcvbuf": rcvbuf, "rate_bps": rate_bps}
        if self.server == "rabbitmq":
            return ViewerSpec(
                "stomp",
                HOST,
                port,
                "/ws",
                destination=f"/topic/convengine.audit.{conversation}",
                login="guest",
                passcode="guest",
                **common,
            )
        if self.kind == "sse":
            query = "" if coalesce else "?coalesce=false"
            return ViewerSpec("sse", HOST, port, f"/api/v1/conversation/stream/{conversation}{query}", **common)
        path = "/ws-convengine"
        if self.kind == "sockjs":
            path = f"/ws-convengine/{uuid.uuid4().int % 1000:03d}/{uuid.uuid4().hex[:8]}/websocket"
        headers = () if coalesce else (("coalesce", "false"),)
        return ViewerSpec(
            self.kind,
            HOST,
            port,
            path,
            destination=f"/topic/convengine/audit/{conversation}",
            subscribe_headers=headers,
            **common,
        )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("gateway-stomp", "gateway", "stomp", "gateway STOMP over WebSocket"),
        Target("gateway-sockjs", "gateway", "sockjs", "gateway STOMP over SockJS-websocket"),
        Target("gateway-sse", "gateway", "sse", "gateway SSE"),
        Target("ws-baseline", "ws-baseline", "stomp", "bare websockets broadcast()"),
        Target("sse-baseline", "sse-baseline", "sse", "bare starlette SSE fan-out"),
        Target("rabbitmq", "rabbitmq", "stomp", "RabbitMQ Web-STOMP", cap=RABBIT_CAP),
        # Issue 14: two gateway processes sharing one redis-server, viewers split between them.
        Target("cluster-stomp", "cluster", "stomp", "2 gateways + Redis, STOMP over WebSocket"),
        Target("cluster-sse", "cluster", "sse", "2 gateways + Redis, SSE"),
    )
}
# The single process each cluster target is compared with.
SINGLE_OF = {"cluster-stomp": "gateway-stomp", "cluster-sse": "gateway-sse"}


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Simulator:
    """The HQ simulator: scripted turns, per-conversation upstream counters."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        args = python_module(
            "gateway.simulator",
            "--port",
            str(self.port),
            "--token",
            TOKEN,
            "--keepalive-s",
            "5",
            "--no-access-log",
            "--log-level",
            "warning",
            "--seed",
            "7",
        )
        self.process: ServerProcess = start_process(
            args, ready_url=f"http://{HOST}:{self.port}/_sim/healthz", log_dir=log_dir, name="simulator"
        )
        self.url = f"http://{HOST}:{self.port}"
        self._auth = {"Authorization": f"Bearer {TOKEN}"}

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, dict[str, int]]:
        reply = httpx.get(f"{self.url}/_sim/stats", headers=self._auth, timeout=30)
        reply.raise_for_status()
        result: dict[str, dict[str, int]] = reply.json()
        return result

    def upstreams(self, conversations: list[str]) -> dict[str, Any]:
        """How many conversations have exactly one open upstream, and were opened exactly once."""
        stats = self.stats()
        open_streams, opens = stats["open_streams"], stats["stream_opens"]
        return {
            "conversations": len(conversations),
            "exactly_one_open": sum(open_streams.get(c, 0) == 1 for c in conversations),
            "opened_once": sum(opens.get(c, 0) == 1 for c in conversations),
            "max_open": max((open_streams.get(c, 0) for c in conversations), default=0),
        }

    def wait_upstreams(self, conversations: list[str], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_streams = self.stats()["open_streams"]
            if all(open_streams.get(c, 0) >= 1 for c in conversations):
                return True
            time.sleep(0.1)
        return False

    def submit(self, conversations: list[str], text: str, spread_s: float = 0.0, concurrency: int = 32) -> None:
        """Start one scripted turn in each conversation (directly at HQ), paced evenly over ``spread_s``.

        Pacing keeps many conversations out of phase, as real turns are, instead of one synchronized burst.
        """

        async def run() -> None:
            gate = asyncio.Semaphore(concurrency)
            loop = asyncio.get_running_loop()
            start = loop.time()
            step = spread_s / len(conversations) if conversations else 0.0
            async with httpx.AsyncClient(base_url=self.url, headers=self._auth, timeout=30) as client:

                async def one(i: int, conversation: str) -> None:
                    await asyncio.sleep(max(0.0, start + i * step - loop.time()))
                    async with gate:
                        reply = await client.post(f"/v1/api/conversations/{conversation}/messages", json={"text": text})
                        reply.raise_for_status()

                await asyncio.gather(*(one(i, c) for i, c in enumerate(conversations)))

        asyncio.run(run())

    def stop(self) -> None:
        _stop(self.process.proc)


class Server:
    """A running server under test: ``pid`` is the process whose /proc is accounted."""

    def __init__(self, target: Target, sim: Simulator, log_dir: Path) -> None:
        self.target = target
        self._sim = sim
        self._log_dir = log_dir
        self._process: ServerProcess | None = None
        self._publisher: subprocess.Popen[bytes] | None = None
        self._cluster: Any = None
        self.ports: list[int] = []
        if target.server == "cluster":
            from benchmarks.soak.cluster import Cluster  # imports this module

            env = {
                "GATEWAY_HQ_LINGER_S": "2",
                "GATEWAY_LOG_LEVEL": "warning",
                "GATEWAY_LIMITS_UPSTREAM_ACTIVATION_BURST": "0",
            }
            self._cluster = Cluster(log_dir, gateways=2, extra_env=env, sim=sim, log_level="warning")
            self.ports = self._cluster.ports
            self.port = self.ports[0]
            self.pid = self._cluster.gateways[0].pid
            return
        if target.server == "rabbitmq":
            pid = rabbitmq_pid()
            if pid is None:
                raise RuntimeError("RabbitMQ is not running (no beam.smp booting rabbit)")
            self.pid, self.port = pid, RABBIT_WS_PORT
            return
        self.port = free_port()
        if target.server == "gateway":
            env = {
                "GATEWAY_HOST": HOST,
                "GATEWAY_PORT": str(self.port),
                "GATEWAY_HQ_BASE_URL": sim.url,
                "GATEWAY_HQ_TOKEN": TOKEN,
                "GATEWAY_HQ_LINGER_S": "2",
                "GATEWAY_LOG_LEVEL": "warning",
                "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "0",  # every viewer comes from 127.0.0.1
                "GATEWAY_LIMITS_UPSTREAM_ACTIVATION_BURST": "0",  # 1,000 conversations opened from there too
            }
            args = python_module("gateway.cli", "serve")
            ready = f"http://{HOST}:{self.port}/healthz"
        else:
            module = "benchmarks.baselines." + ("ws_broadcast" if target.server == "ws-baseline" else "sse_fanout")
            args = python_module(module, "--port", str(self.port), "--hq", sim.url, "--token", TOKEN)
            env = {}
            ready = f"http://{HOST}:{self.port}/"  # websockets answers 426 to plain HTTP: alive
        self._process = start_process(args, ready_url=ready, env=env, log_dir=log_dir, name=target.server, timeout=30)
        self.pid = self._process.pid

    @property
    def pids(self) -> list[int]:
        """Every process a delivery costs CPU in: the server, or all gateways + redis-server of a cluster."""
        return self._cluster.pids() if self._cluster is not None else [self.pid]

    def feed(self, conversations: list[str]) -> None:
        """RabbitMQ only: start the publisher following these conversations (others subscribe upstream themselves)."""
        if self.target.server != "rabbitmq":
            return
        self.unfeed()
        listing = self._log_dir / f"conversations-{time.monotonic_ns()}.txt"
        listing.write_text("\n".join(conversations))
        log_path = self._log_dir / f"rabbit-publisher-{time.monotonic_ns()}.log"
        args = python_module(
            "benchmarks.baselines.rabbit_publisher",
            "--hq",
            self._sim.url,
            "--token",
            TOKEN,
            "--conversations",
            str(listing),
        )
        with log_path.open("wb") as log:
            self._publisher = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parents[1],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 15
        while b"publishing" not in log_path.read_bytes():
            if self._publisher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ publisher did not start: {log_path.read_text()[-500:]}")
            time.sleep(0.05)

    def unfeed(self) -> None:
        if self._publisher is not None:
            _stop(self._publisher)
            self._publisher = None

    def stop(self) -> None:
        self.unfeed()
        if self._cluster is not None:
            self._cluster.stop()
        if self._process is not None:
            _stop(self._process.proc, timeout=15)


def wait_rabbitmq(timeout: float) -> bool:
    """Wait for Web-STOMP on 15674: other engineers' fault tests switch the STOMP plugins off for a while."""
    deadline = time.monotonic() + timeout
    while not _port_open(RABBIT_WS_PORT):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def ensure_rabbitmq_web_stomp() -> bool:
    """True when Web-STOMP answers on 15674 (enabling the plugins if it stays closed for 20 s)."""
    if wait_rabbitmq(20):
        return True
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["rabbitmq-plugins", "enable", "rabbitmq_stomp", "rabbitmq_web_stomp"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _port_open(RABBIT_WS_PORT):
            return True
        time.sleep(0.5)
    return False


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0
