"""The processes a cluster run owns: one redis-server, N ``hq-gateway serve`` sharing it, the HQ simulator.

Every process is started here and stopped here, by PID. A gateway logs ``gateway instance <id> pid
<pid>`` at start; the lease value in Redis is that instance id, so the lease holder maps to a PID.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.targets import HOST, TOKEN, Simulator
from tests.redis_server import RedisServer
from tests.servers import ServerProcess, free_port, python_module, start_process

PREFIX = "hqgw"
_INSTANCE = re.compile(rb"gateway instance ([0-9a-f]+) pid (\d+)")


def lease_key(conversation: str) -> str:
    return f"{PREFIX}:{{{conversation}}}:lease"


def journal_key(conversation: str) -> str:
    return f"{PREFIX}:{{{conversation}}}:journal"


class Redis(RedisServer):
    """redis-server on a free port; restarts keep its data (SHUTDOWN SAVE) or lose it (SIGKILL, no file)."""

    def command(self, *parts: str, timeout: float = 5.0) -> bytes:
        payload = f"*{len(parts)}\r\n" + "".join(f"${len(p.encode())}\r\n{p}\r\n" for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(payload.encode())
            return sock.recv(65536)

    def restart_keeping_data(self, down_s: float) -> None:
        """``SHUTDOWN SAVE`` (an RDB of everything acknowledged), down for ``down_s``, start: data back."""
        process = self.process
        assert process is not None
        with contextlib.suppress(OSError):  # the connection closes as the server exits
            self.command("SHUTDOWN", "SAVE", timeout=30)
        process.wait(30)
        self.process = None
        time.sleep(down_s)
        self.start(timeout=30)

    def restart_losing_data(self, down_s: float) -> None:
        """SIGKILL, remove any saved file, down for ``down_s``, start empty: every key is gone."""
        self.kill()
        for name in ("dump.rdb", "appendonly.aof"):
            (self.directory / name).unlink(missing_ok=True)
        time.sleep(down_s)
        self.start(timeout=30)


class SimHq(Simulator):
    """The simulator with its live fault switches."""

    def faults(self, spec: dict[str, Any]) -> dict[str, Any]:
        reply = httpx.post(f"{self.url}/_sim/faults", json=spec, headers=self._auth, timeout=30)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result


class Gateway:
    """One ``hq-gateway serve`` process of the cluster; ``restart`` brings it back on the same port."""

    def __init__(
        self, index: int, redis_url: str, sim_url: str, log_dir: Path, extra_env: dict[str, str], log_level: str
    ) -> None:
        self.index = index
        self.port = free_port()
        self.env = {
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_HQ_BASE_URL": sim_url,
            "GATEWAY_HQ_TOKEN": TOKEN,
            "GATEWAY_HQ_LINGER_S": "2",
            "GATEWAY_LOG_LEVEL": log_level,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_KEY_PREFIX": PREFIX,
            "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "0",  # every viewer comes from 127.0.0.1
            **extra_env,
        }
        self.log_dir = log_dir
        self.process: ServerProcess | None = None
        self.instance = ""
        self.restarts = 0
        self.start()

    def start(self) -> None:
        self.process = start_process(
            python_module("gateway.cli", "serve"),
            ready_url=f"http://{HOST}:{self.port}/healthz",
            env=self.env,
            log_dir=self.log_dir,
            name=f"gateway-{self.index}",
            timeout=30,
        )
        if self.env["GATEWAY_LOG_LEVEL"] not in ("info", "debug"):
            return  # the instance line is logged at info: the benchmark does not need it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            match = _INSTANCE.search(self.process.log_path.read_bytes())
            if match and int(match.group(2)) == self.process.pid:
                self.instance = match.group(1).decode()
                return
            time.sleep(0.05)
        raise RuntimeError(f"gateway-{self.index} never logged its instance id ({self.process.log_path})")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def sigkill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.alive:
            self.process.proc.send_signal(signal.SIGTERM)
            try:
                self.process.proc.wait(15)
            except Exception:
                self.process.kill()

    def log_lines(self, pattern: bytes) -> int:
        """How many log lines of every incarnation of this gateway contain ``pattern``."""
        total = 0
        for path in self.log_dir.glob(f"gateway-{self.index}-*.log"):
            total += sum(1 for line in path.read_bytes().splitlines() if pattern in line)
        return total


class Cluster:
    """redis-server + ``gateways`` gateway processes + simulator, all owned by this object."""

    def __init__(
        self,
        log_dir: Path,
        gateways: int = 2,
        extra_env: dict[str, str] | None = None,
        sim: Simulator | None = None,
        log_level: str = "info",
    ) -> None:
        self.log_dir = log_dir
        self.redis = Redis(log_dir / f"redis-{time.monotonic_ns()}")
        self.redis.start()
        self._own_sim = sim is None
        self.sim: Simulator = sim or SimHq(log_dir)
        self.gateways: list[Gateway] = []
        try:
            for i in range(gateways):
                self.gateways.append(Gateway(i, self.redis.url, self.sim.url, log_dir, extra_env or {}, log_level))
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [g.port for g in self.gateways]

    def pids(self) -> list[int]:
        """Every process whose CPU a cluster delivery costs: the gateways and redis-server."""
        pids = [g.pid for g in self.gateways if g.alive]
        if self.redis.process is not None:
            pids.append(self.redis.process.pid)
        return pids

    def by_instance(self, instance: str) -> Gateway | None:
        return next((g for g in self.gateways if g.instance == instance and g.alive), None)

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        if self._own_sim:
            self.sim.stop()
        self.redis.stop()
