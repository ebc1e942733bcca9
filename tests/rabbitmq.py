"""The local RabbitMQ with its STOMP plugin, for bridge tests: enable it, subscribe like a dashboard, cut it.

RabbitMQ drops what is published to a ``/topic/`` nobody is bound to, so the test dashboard binds
a durable, named queue (``x-queue-name``) to the topic: whatever the bridge publishes while the
dashboard is away waits there, exactly like a production consumer that must not lose anything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import stomp

from tests.servers import wait_until

HOST = "127.0.0.1"
STOMP_PORT = 61613
AMQP_PORT = 5672
BROKER_URL = f"stomp://guest:guest@{HOST}:{STOMP_PORT}/"
PLUGIN_TIMEOUT_S = 120


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _missing(reason: str) -> None:
    """In CI a missing broker is a failure, locally a skip that says why."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI requires RabbitMQ with rabbitmq_stomp)")
    pytest.skip(reason)


def _plugins(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("rabbitmq-plugins")
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=PLUGIN_TIMEOUT_S, check=False)


def require_stomp_plugin() -> None:
    """Make sure RabbitMQ's STOMP listener answers; enable the plugin when RabbitMQ runs without it."""
    if port_open(STOMP_PORT):
        return
    if shutil.which("rabbitmq-plugins") is None or not port_open(AMQP_PORT):
        _missing(f"no RabbitMQ here (rabbitmq-plugins and port {AMQP_PORT} needed)")
    done = _plugins("enable", "rabbitmq_stomp")
    try:
        wait_until(lambda: port_open(STOMP_PORT), 60, 0.2, "RabbitMQ STOMP listener")
    except AssertionError:
        _missing(f"rabbitmq_stomp did not start listening on {STOMP_PORT}: {done.stderr.strip()[-300:]}")


@contextmanager
def stomp_listener_down() -> Iterator[None]:
    """Disable rabbitmq_stomp (listener and connections gone); always restore what was enabled."""
    enabled = set(_plugins("list", "-E", "-m").stdout.split())
    _plugins("disable", "rabbitmq_stomp")  # rabbitmq_web_stomp depends on it and goes too
    try:
        wait_until(lambda: not port_open(STOMP_PORT), 30, 0.1, "STOMP listener to close")
        yield
    finally:
        again = [p for p in ("rabbitmq_stomp", "rabbitmq_web_stomp") if p == "rabbitmq_stomp" or p in enabled]
        _plugins("enable", *again)
        wait_until(lambda: port_open(STOMP_PORT), 60, 0.2, "STOMP listener to come back")


class Dashboard:
    """A STOMP consumer on the broker: durable queue bound to the topic, acks each message, reconnects."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.queue = f"hqgw-test-{uuid.uuid4().hex[:12]}"
        self.messages: list[tuple[dict[str, str], bytes]] = []
        self.connects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._keep_connected, name="test-dashboard", daemon=True)

    def start(self) -> Dashboard:
        self._connect()  # synchronously: the queue is bound before anything is published
        self._thread.start()
        return self

    def _connect(self) -> None:
        conn = stomp.Connection12([(HOST, STOMP_PORT)], vhost="/", heartbeats=(1000, 1000), auto_decode=False)
        conn.set_listener("dashboard", self)
        conn.connect("guest", "guest", wait=True)
        self._subscribed.clear()
        headers = {"durable": "true", "auto-delete": "false", "x-queue-name": self.queue, "x-expires": "300000"}
        conn.subscribe(self.destination, id="dashboard", ack="client-individual", headers=headers, receipt="sub")
        if not self._subscribed.wait(10):
            conn.disconnect()
            raise TimeoutError("no RECEIPT for SUBSCRIBE")
        self._conn = conn
        self.connects += 1

    def _keep_connected(self) -> None:
        while not self._stop.wait(0.2):
            if self._conn is not None and self._conn.is_connected():
                continue
            with suppress(Exception):
                self._connect()

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == "sub":
            self._subscribed.set()

    def on_message(self, frame: Any) -> None:
        with self._lock:
            self.messages.append((dict(frame.headers), bytes(frame.body)))
        with suppress(Exception):
            self._conn.ack(frame.headers["ack"])

    def seqs(self) -> list[int]:
        """Every delivery's seq header, duplicates included, in arrival order."""
        with self._lock:
            return [int(h["seq"]) for h, _ in self.messages]

    def unique(self) -> dict[int, tuple[dict[str, str], bytes]]:
        """First delivery of each seq, in arrival order (what a consumer deduplicating by seq keeps)."""
        seen: dict[int, tuple[dict[str, str], bytes]] = {}
        with self._lock:
            for headers, body in self.messages:
                seen.setdefault(int(headers["seq"]), (headers, body))
        return seen

    def saw_stage(self, stage: str, times: int = 1) -> bool:
        """At least ``times`` distinct envelopes of ``stage`` arrived."""
        return sum(1 for h, _ in self.unique().values() if h.get("stage") == stage) >= times

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        conn = self._conn
        if conn is not None and conn.is_connected():
            with suppress(Exception):
                # RabbitMQ deletes a durable subscription's queue on UNSUBSCRIBE with durable:true.
                conn.unsubscribe("dashboard", headers={"durable": "true", "x-queue-name": self.queue})
                time.sleep(0.1)
                conn.disconnect()
