import os
import subprocess
import sys

import pytest

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
