"""Real JavaScript clients: the ConvEngine v2 seed's @stomp/stompjs + sockjs-client code under Node.

Each test runs ``node tests/node/stomp_client.mjs`` (see its header for the options and the JSON lines
it prints) against a live gateway, waits for its ``ready`` line (the RECEIPT of its SUBSCRIBE), submits
a turn, and checks what the client saw. ``make test`` installs the Node dependencies from
``tests/node/package-lock.json``; without them these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import SseViewer, assert_dense
from tests.integration.conftest import StartGateway, sim_stats, submit
from tests.servers import ROOT, ServerProcess, wait_until

pytestmark = pytest.mark.usefixtures("node")  # skip (or fail in CI) before any server starts

NODE_DIR = ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "stomp_client.mjs"
NODE_PACKAGES = ("@stomp/stompjs", "sockjs-client", "ws")
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
FALLBACKS = ("xhr-streaming", "xhr-polling", "eventsource")
# Non-ASCII, a JSON line separator, quotes and a percent sign must survive STOMP inside SockJS framing.
TURN = 'node turn [deltas=8] [tools=1] h\u00e9llo \U0001f600 \u2028 "q" %41'


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, once tests/node/node_modules is installed; skip locally, fail in CI."""
    problems = []
    node_bin = shutil.which("node")
    if node_bin is None:
        problems.append("node is not on PATH")
    if IN_CI and shutil.which("npm") is None:
        problems.append("npm is not on PATH")
    missing = [p for p in NODE_PACKAGES if not (NODE_DIR / "node_modules" / p / "package.json").is_file()]
    if missing:
        problems.append(f"tests/node/node_modules lacks {', '.join(missing)}: run `make test` or "
                        "`cd tests/node && npm ci`")  # fmt: skip
    if problems:
        reason = "Node STOMP clients unavailable: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    assert node_bin is not None
    return node_bin


class NodeClient:
    """One ``stomp_client.mjs`` process; its stdout JSON lines are read by a thread into a queue."""

    def __init__(self, node: str, gw: ServerProcess, conversation: str, **options: Any) -> None:
        args = {"base": gw.url, "conversation": conversation, "timeoutMs": 15_000, **options}
        self.options = args
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), json.dumps(args)],
            cwd=NODE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        self.readies: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.stderr.append(f"(stdout, not JSON) {line}")
        self.lines.put(None)  # end of output

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def _next(self, deadline: float, what: str) -> dict[str, Any] | None:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"node client {self.options['transport']}: timed out waiting for {what}; "
                                 f"stderr: {''.join(self.stderr)[-2000:]}") from None  # fmt: skip
        if line is not None:
            if line.get("ready"):
                self.readies.append(line)
            elif line.get("summary"):
                self.summary = line
            elif "seq" in line:
                self.messages.append(line)
        return line

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Block until the client printed its ready line: its SUBSCRIBE was answered with a RECEIPT."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline, "ready")
            assert line is not None, f"node client exited before ready: {self.summary} {''.join(self.stderr)}"
            if line.get("ready"):
                return line

    def finish(self, timeout: float = 20.0) -> dict[str, Any]:
        """Read until the summary and the exit; the run must have ended with its stop condition."""
        deadline = time.monotonic() + timeout
        while self._next(deadline, "summary") is not None:
            pass
        code = self.proc.wait(max(0.1, deadline - time.monotonic()))
        assert self.summary is not None, f"no summary line; stderr: {''.join(self.stderr)}"
        assert code == 0 and self.summary["ok"], f"exit {code}: {self.summary}; stderr: {''.join(self.stderr)}"
        return self.summary

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its own pid
        self.proc.wait(10)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [m["body"] for m in self.messages]

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages]


@pytest.fixture
def js_client(node: str) -> Iterator[Any]:
    started: list[NodeClient] = []

    def start(gw: ServerProcess, conversation: str, **options: Any) -> NodeClient:
        started.append(NodeClient(node, gw, conversation, **options))
        return started[-1]

    yield start
    for client in started:
        client.stop()


def journal(gw: ServerProcess, conv: str) -> list[dict[str, Any]]:
    """Every envelope the gateway journaled for ``conv``: the reference every viewer must match."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        page = httpx.get(f"{gw.url}/api/v1/conversation/audit/{conv}", params={"after": after, "limit": 500}).json()
        items += page["items"]
        if page["nextAfter"] is None:
            return items
        after = page["nextAfter"]


def assert_whole_turn(client: NodeClient, gw: ServerProcess, sim: ServerProcess, conv: str) -> None:
    """Every envelope of the turn, in order, once, as journaled; one upstream connection for all of it."""
    assert_dense(client.seqs)
    for m in client.messages:
        headers, body = m["headers"], m["body"]
        assert headers["destination"] == f"/topic/convengine/audit/{conv}"
        assert headers["content-type"] == "application/json"
        assert m["seq"] == (body["auditId"] if body["eventType"] == "AUDIT" else body["verbose"]["verboseId"])
    assert client.bodies == journal(gw, conv)
    assert client.bodies[0]["stage"] == "USER_INPUT" and client.bodies[0]["payload"]["message"] == TURN
    assert client.bodies[-1]["stage"] == "ENGINE_RETURN"
    assert sim_stats(sim)["stream_opens"][conv] == 1


def run_turn(client: NodeClient, gw: ServerProcess, conv: str, message: str = TURN) -> dict[str, Any]:
    ready = client.wait_ready()
    assert submit(gw, conv, message).status_code == 202
    client.finish()
    return ready


def test_seed_client_over_sockjs(gateway: ServerProcess, simulator: ServerProcess, conv: str, js_client: Any) -> None:
    """new SockJS("/ws-convengine") unchanged: SockJS settles on its websocket transport."""
    client = js_client(gateway, conv, transport="sockjs")
    ready = run_turn(client, gateway, conv)
    assert ready["transport"] == "websocket"
    # stompjs defaults (heart-beat 10000,10000) against the gateway's default 10 s: negotiated both ways.
    assert ready["connected"]["version"] == "1.2"
    assert ready["connected"]["heart-beat"] == "10000,10000"
    assert ready["connected"]["server"].startswith("hq-gateway")
    assert_whole_turn(client, gateway, simulator, conv)


@pytest.mark.parametrize("subprotocols", [None, ["v12.stomp"]], ids=["brokerURL", "v12.stomp"])
def test_raw_websocket(
    gateway: ServerProcess, simulator: ServerProcess, conv: str, js_client: Any, subprotocols: list[str] | None
) -> None:
    """stompjs over ws: brokerURL (stompjs offers v10/v11/v12.stomp) and new WebSocket(url, ["v12.stomp"])."""
    options = {"subprotocols": subprotocols} if subprotocols else {}
    client = js_client(gateway, conv, transport="websocket", **options)
    ready = run_turn(client, gateway, conv)
    assert ready["protocol"] == "v12.stomp"
    assert ready["connected"]["version"] == "1.2"
    assert_whole_turn(client, gateway, simulator, conv)


@pytest.mark.parametrize("transport", FALLBACKS)
def test_sockjs_fallback_transport(
    gateway: ServerProcess, simulator: ServerProcess, conv: str, js_client: Any, transport: str
) -> None:
    """SockJS forced onto an HTTP fallback, as behind a proxy that blocks WebSocket."""
    client = js_client(gateway, conv, transport=transport)
    ready = run_turn(client, gateway, conv)
    assert ready["transport"] == transport
    assert_whole_turn(client, gateway, simulator, conv)


def test_every_js_client_and_an_sse_viewer_see_the_same_turn(
    gateway: ServerProcess, simulator: ServerProcess, conv: str, js_client: Any
) -> None:
    transports = ["sockjs", "websocket", *FALLBACKS]
    clients = [js_client(gateway, conv, transport=t) for t in transports]

    async def main() -> list[dict[str, Any]]:
        viewer = SseViewer(gateway.url, conv).start()
        try:
            await viewer.wait_connected()
            for client in clients:
                await asyncio.to_thread(client.wait_ready)
            assert submit(gateway, conv, TURN).status_code == 202
            await asyncio.gather(*(asyncio.to_thread(c.finish) for c in clients))
            await viewer.wait_for_stage("ENGINE_RETURN")
            assert viewer.seqs == clients[0].seqs
            return viewer.envelopes
        finally:
            await viewer.stop()

    sse_envelopes = asyncio.run(main())
    for client in clients:
        assert client.bodies == sse_envelopes, client.options["transport"]
    assert_whole_turn(clients[0], gateway, simulator, conv)


@pytest.mark.parametrize("transport", ["sockjs", "xhr-streaming"])
def test_stompjs_reconnects_and_resumes_with_since_seq(
    gateway: ServerProcess, simulator: ServerProcess, conv: str, js_client: Any, transport: str
) -> None:
    """The connection drops mid-turn; stompjs reconnects and re-subscribes with since-seq: no gap, no duplicate."""
    message = TURN.replace("[deltas=8]", "[deltas=40]")
    client = js_client(gateway, conv, transport=transport, dropAfter=5, reconnectDelay=100)
    run_turn(client, gateway, conv, message)
    assert client.summary is not None
    assert client.summary["connects"] == 2 and len(client.summary["socketCloses"]) == 1
    assert [r["connects"] for r in client.readies] == [1, 2]
    assert_dense(client.seqs)
    assert client.bodies == journal(gateway, conv)
    assert client.bodies[-1]["stage"] == "ENGINE_RETURN"
    assert sim_stats(simulator)["stream_opens"][conv] == 1
    # A later client resumes from a seq the first one saw: the journal replays exactly the rest.
    late = js_client(gateway, conv, transport=transport, sinceSeq=client.seqs[3], count=len(client.seqs) - 4)
    late.wait_ready()
    late.finish()
    assert late.seqs == client.seqs[4:] and late.bodies == client.bodies[4:]
    assert "stale" not in late.messages[0]["headers"]


def test_heartbeats_both_ways_keep_stompjs_connected(
    simulator: ServerProcess, start_gateway: StartGateway, js_client: Any
) -> None:
    """250 ms heart-beats each way over every transport at once: nobody declares the other dead.

    stompjs closes after 2 periods without a byte from the server; the gateway after 2 without one from the client.
    """
    gw = start_gateway(simulator.url, GATEWAY_STOMP_HEARTBEAT_MS="250")
    transports = ["websocket", "sockjs", *FALLBACKS]
    convs = [str(uuid.uuid4()) for _ in transports]
    clients = [
        js_client(gw, c, transport=t, heartbeatIncoming=250, heartbeatOutgoing=250, holdHeartbeats=4)
        for t, c in zip(transports, convs, strict=True)
    ]
    readies = [c.wait_ready() for c in clients]
    for c in convs:
        assert submit(gw, c, TURN).status_code == 202
    for transport, conv, client, ready in zip(transports, convs, clients, readies, strict=True):
        client.finish()
        assert ready["connected"]["heart-beat"] == "250,250", transport
        summary = client.summary
        assert summary is not None
        assert summary["connects"] == 1 and summary["heartbeatsLost"] == 0, (transport, summary)
        assert summary["socketCloses"] == [], (transport, summary)
        assert summary["pongs"] >= 4 and summary["pings"] >= 4, (transport, summary)
        assert_whole_turn(client, gw, simulator, conv)


@pytest.mark.parametrize("transport", ["sockjs", "websocket"])
def test_late_joiner_snapshot_with_the_seed_client(
    gateway: ServerProcess, conv: str, js_client: Any, transport: str
) -> None:
    """stompjs joins mid-reply with snapshot:turn: one TURN_SNAPSHOT, then exactly the rest."""
    assert submit(gateway, conv, "late stompjs [deltas=150] [interval_ms=10]").status_code == 202
    wait_until(lambda: len(journal(gateway, conv)) > 40, 10, what="reply under way")
    client = js_client(gateway, conv, transport=transport, subscribeHeaders={"snapshot": "turn"})
    client.wait_ready()
    client.finish(timeout=30)
    snap = client.messages[0]["body"]
    assert snap["stage"] == "TURN_SNAPSHOT" and snap["payload"]["running"] is True
    seqs = client.seqs
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] == snap["auditId"]
    rest = "".join(b["payload"]["text"] for b in client.bodies[1:] if b["stage"] == "ASSISTANT_OUTPUT_DELTA")
    final = next(e for e in journal(gateway, conv) if e["stage"] == "ASSISTANT_OUTPUT")["payload"]["text"]
    assert snap["payload"]["reply"] + rest == final
