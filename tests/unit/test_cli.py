import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

from gateway import __version__

CLI = [sys.executable, "-m", "gateway.cli"]


@pytest.mark.parametrize("command", ["serve", "simulate", "demo", "token"])
def test_help_for_each_command(command: str) -> None:
    out = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "usage: hq-gateway" in out.stdout


def test_bad_setting_stops_with_one_line_naming_it() -> None:
    env = {**os.environ, "GATEWAY_PORT": "abc"}
    out = subprocess.run([*CLI, "serve"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["hq-gateway: configuration error: GATEWAY_PORT: expected int, got 'abc'"]


def test_auth_none_refuses_a_public_bind() -> None:
    env = {**os.environ, "GATEWAY_HOST": "0.0.0.0", "GATEWAY_AUTH_MODE": "none"}
    out = subprocess.run([*CLI, "serve"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and "GATEWAY_AUTH" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_served_processes_freeze_startup_objects_and_collect_young_ones_rarely() -> None:
    code = (
        "import gc; from gateway.cli import tune_gc; before = gc.get_freeze_count(); tune_gc(); "
        "print(gc.get_threshold(), before == 0 < gc.get_freeze_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(50000, 20, 10) True"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_version() -> None:
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == f"hq-gateway {__version__}"


@pytest.mark.parametrize("busy", ["gateway", "simulator"])
def test_demo_on_a_busy_port_says_so_in_one_line(busy: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw_port, sim_port = (port, _free_port()) if busy == "gateway" else (_free_port(), port)
        cmd = [*CLI, "demo", "--port", str(gw_port), "--simulator-port", str(sim_port)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    option = "GATEWAY_PORT (make demo PORT=…)" if busy == "gateway" else "--simulator-port (make demo SIM_PORT=…)"
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"hq-gateway: configuration error: {option}: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_serve_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "GATEWAY_PORT": str(taken.getsockname()[1])}
        out = subprocess.run([*CLI, "serve"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "GATEWAY_HOST/GATEWAY_PORT: cannot listen on" in out.stderr


def _run_until_healthy(cmd: list[str], url: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "did not start"
        time.sleep(0.05)


def test_serve_prints_where_it_listens() -> None:
    port = _free_port()
    env = {**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1"}
    proc = _run_until_healthy([*CLI, "serve"], f"http://127.0.0.1:{port}", env)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert f"hq-gateway {__version__} listening on http://127.0.0.1:{port}" in out
    assert "Traceback" not in out


def test_demo_prints_both_addresses_once_and_stops_quietly() -> None:
    gw_port, sim_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{gw_port}"
    proc = _run_until_healthy([*CLI, "demo", "--port", str(gw_port), "--simulator-port", str(sim_port)], url)
    try:
        for _ in range(3):  # three conversations with an open upstream each
            body = {"conversationId": str(uuid.uuid4()), "message": "hello"}
            assert httpx.post(f"{url}/api/v1/conversation/message", json=body, timeout=10).status_code == 202
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    for line in ("Started server process", "Application startup complete", "Finished server process"):
        assert out.count(line) == 1, (line, out)
    assert f"gateway:   {url}\n" in out and f"console:   {url}/console\n" in out
    assert f"simulator: http://127.0.0.1:{sim_port}" in out
    assert "reconnect" not in out and "Traceback" not in out and "never awaited" not in out, out


def test_license_is_an_spdx_expression_setuptools_accepts() -> None:
    """setuptools stops building ``license = { text = … }`` after 2027-02-18 (PEP 639)."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first release with PEP 639
