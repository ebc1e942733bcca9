"""Start real server processes on free ports for tests, wait until they answer, always stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.waiting import wait_until

__all__ = ["ServerProcess", "free_port", "python_module", "start_process", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; a small reuse race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A started server: ``url`` (scheme://host:port), ``pid``, ``log_path``; stop() or kill() it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.pid = proc.pid
        self.log_path = log_path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
        if self.alive:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.wait()
        self._print_log_tail()
        return code

    def kill(self) -> int:
        """SIGKILL (a crash, as far as clients can tell); returns the exit code."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        return self.proc.wait()

    def _print_log_tail(self, lines: int = 60) -> None:
        # Captured by pytest and shown only when the test failed.
        tail = self.log().splitlines()[-lines:]
        print(f"--- {self.log_path} (pid {self.pid}, exit {self.proc.returncode}) ---", *tail, sep="\n")


def start_process(
    args: Sequence[str],
    *,
    ready_url: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 15.0,
    log_dir: Path | None = None,
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code < 500,
    cwd: Path = ROOT,
    name: str | None = None,
) -> ServerProcess:
    """Run ``args`` with stdout+stderr in a log file; return once ``ready_url`` answers ``ready``.

    Raises RuntimeError with the log when the process exits or is not ready before ``timeout``.
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="hqgw-test-"))
    log_path = log_dir / f"{name or Path(args[0]).name}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd
        )
    parts = urlsplit(ready_url)
    server = ServerProcess(proc, f"{parts.scheme}://{parts.netloc}", log_path)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if not server.alive:
                raise RuntimeError(f"{args[0]} exited with {server.returncode} before ready:\n{server.log()}")
            try:
                if ready(client.get(ready_url)):
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"{args[0]} not ready at {ready_url} within {timeout} s:\n{server.log()}")
            time.sleep(0.05)


def python_module(module: str, *args: str) -> list[str]:
    """The command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
