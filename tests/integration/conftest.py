"""Real servers for integration tests: the HQ simulator and the gateway, on free ports."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess, free_port, python_module, start_process

TOKEN = "hq_pat_test_secret_token_123"

StartSimulator = Callable[..., ServerProcess]
StartGateway = Callable[..., ServerProcess]


def _simulator(log_dir: Path, *flags: str) -> ServerProcess:
    port = free_port()
    args = python_module("gateway.simulator", "--port", str(port), "--token", TOKEN, "--keepalive-s", "0.5",
                         "--delta-interval-ms", "2", "--seed", "7", "--no-access-log", *flags)  # fmt: skip
    return start_process(args, ready_url=f"http://127.0.0.1:{port}/_sim/healthz", log_dir=log_dir, name="simulator",
                         ready=lambda r: r.status_code < 500)  # fmt: skip


def _gateway(log_dir: Path, hq_url: str, **env: str) -> ServerProcess:
    port = int(env.pop("port", 0)) or free_port()
    full = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_HQ_BASE_URL": hq_url,
        "GATEWAY_HQ_TOKEN": TOKEN,
        "GATEWAY_HQ_LINGER_S": "1",
        "GATEWAY_HQ_IDLE_TIMEOUT_S": "3",
        "GATEWAY_HQ_BACKOFF_INITIAL_S": "0.05",
        "GATEWAY_HQ_BACKOFF_MAX_S": "0.5",
        "GATEWAY_SSE_KEEPALIVE_S": "0.5",
        "GATEWAY_LOG_LEVEL": "info",
        # The whole suite submits from 127.0.0.1 in mode none (one bucket); test_auth tests the limit itself.
        "GATEWAY_LIMITS_SUBMIT_BURST": "1000",
        # Likewise one activation bucket for the whole suite; test_upstream_limits tests the limit itself.
        "GATEWAY_LIMITS_UPSTREAM_ACTIVATION_BURST": "0",
        **env,
    }
    return start_process(python_module("gateway.cli", "serve"), env=full, log_dir=log_dir, name="gateway",
                         ready_url=f"http://127.0.0.1:{port}/healthz")  # fmt: skip


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def simulator(logs: Path) -> Iterator[ServerProcess]:
    sim = _simulator(logs)
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def gateway(logs: Path, simulator: ServerProcess) -> Iterator[ServerProcess]:
    gw = _gateway(logs, simulator.url)
    yield gw
    gw.stop()


@pytest.fixture
def start_simulator(logs: Path) -> Iterator[StartSimulator]:
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        started.append(_simulator(logs, *flags))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_gateway(logs: Path) -> Iterator[StartGateway]:
    started: list[ServerProcess] = []

    def start(hq_url: str, **env: str) -> ServerProcess:
        started.append(_gateway(logs, hq_url, **env))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def conv() -> str:
    return str(uuid.uuid4())


def sim_stats(sim: ServerProcess) -> dict:
    return httpx.get(f"{sim.url}/_sim/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()


def sim_faults(sim: ServerProcess, spec: dict) -> None:
    r = httpx.post(f"{sim.url}/_sim/faults", json=spec, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code < 300, r.text


def submit(gw: ServerProcess, conversation_id: str, message: str, **extra: object) -> httpx.Response:
    body = {"conversationId": conversation_id, "message": message, **extra}
    return httpx.post(f"{gw.url}/api/v1/conversation/message", json=body, timeout=15)
